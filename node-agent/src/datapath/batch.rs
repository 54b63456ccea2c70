//! Several route-netlink requests in one datagram.
//!
//! rtnetlink's `Handle` hands each request to its connection task, which sends one request
//! per wake-up: requests made together still go out one round trip apart (netlink-proto 0.14).
//! A [`Batch`] sends them with `request_batch`, as one `sendmsg`; the kernel handles the
//! messages in order and answers every one (an error does not stop the ones after it), so a
//! pod's six settings cost one system call and one wake-up.

use std::io;

use futures::StreamExt;
use rtnetlink::packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::SocketAddr;
use rtnetlink::sys::protocols::NETLINK_ROUTE;

/// A route-netlink connection for batches. The connection is driven by a task on the current
/// tokio runtime and ends when every clone of the handle is dropped.
#[derive(Clone, Debug)]
pub struct Batch(ConnectionHandle<RouteNetlinkMessage>);

/// How a request changes the kernel's state; sets the message's netlink flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Change an existing object (`RTM_SETLINK`).
    Set,
    /// Create an object that must not exist yet (`ip ... add`).
    Add,
    /// Create an object or replace the one there (`ip ... replace`).
    Replace,
}

impl Verb {
    fn flags(self) -> u16 {
        NLM_F_REQUEST
            | NLM_F_ACK
            | match self {
                Self::Set => 0,
                Self::Add => NLM_F_CREATE | NLM_F_EXCL,
                Self::Replace => NLM_F_CREATE | NLM_F_REPLACE,
            }
    }
}

/// The netlink message for `payload`, with the flags of `verb`.
pub fn request(verb: Verb, payload: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NetlinkMessage::from(payload);
    message.header.flags = verb.flags();
    message
}

impl Batch {
    /// Opens the connection in the calling thread's namespace. Must be called with the tokio
    /// runtime entered (the socket registers with its reactor); the returned connection future
    /// must be spawned on it.
    pub fn open() -> io::Result<(Self, impl Future<Output = ()> + Send + 'static)> {
        let (mut connection, handle, _) =
            rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE)?;
        // Every request's answer, the acknowledgements too: the n-th answer is the n-th
        // request's (see `outcomes`).
        connection.set_forward_ack(true);
        Ok((Self(handle), connection))
    }

    /// Sends `requests` as one datagram and returns each one's outcome, in the order sent.
    /// The outer error means the connection itself failed (nothing is known about the
    /// requests); every request has been answered when this returns `Ok`.
    pub async fn send(
        &self,
        requests: Vec<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> io::Result<Vec<Result<(), rtnetlink::Error>>> {
        let count = requests.len();
        let mut answers = self
            .0
            .request_batch(requests, SocketAddr::new(0, 0))
            .map_err(|e| io::Error::other(format!("send a netlink batch: {e}")))?;
        let mut received = Vec::with_capacity(count);
        while let Some(answer) = answers.next().await {
            received.push(answer);
        }
        outcomes(count, received)
    }
}

/// Pairs the answers with the `count` requests of one batch. The connection numbered the
/// requests consecutively in the order sent, and the kernel echoes each request's number, so
/// sorting by it restores the order even if answers arrived otherwise.
fn outcomes(
    count: usize,
    mut answers: Vec<NetlinkMessage<RouteNetlinkMessage>>,
) -> io::Result<Vec<Result<(), rtnetlink::Error>>> {
    if answers.len() != count {
        return Err(io::Error::other(format!(
            "a netlink batch of {count} requests got {} answers; the connection closed early?",
            answers.len()
        )));
    }
    answers.sort_by_key(|answer| answer.header.sequence_number);
    Ok(answers.into_iter().map(outcome).collect())
}

fn outcome(answer: NetlinkMessage<RouteNetlinkMessage>) -> Result<(), rtnetlink::Error> {
    match answer.payload {
        NetlinkPayload::Error(ErrorMessage { code: None, .. }) => Ok(()),
        NetlinkPayload::Error(error) => Err(rtnetlink::Error::NetlinkError(error)),
        _ => Err(rtnetlink::Error::UnexpectedMessage(answer)),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::NetlinkHeader;
    use rtnetlink::packet_route::link::LinkMessage;

    use super::*;

    fn answer(sequence: u32, code: i32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(code);
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        NetlinkMessage::new(header, NetlinkPayload::Error(error))
    }

    #[test]
    fn flags_match_ip_for_each_verb() {
        let flags = |verb| request(verb, RouteNetlinkMessage::SetLink(LinkMessage::default()));
        assert_eq!(flags(Verb::Set).header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(
            flags(Verb::Add).header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(
            flags(Verb::Replace).header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
    }

    #[test]
    fn answers_are_paired_with_requests_by_sequence_number() {
        // Answers for requests 7, 8, 9, the middle one refused with EEXIST, arriving shuffled.
        let got = outcomes(3, vec![answer(9, 0), answer(7, 0), answer(8, -17)]).unwrap();
        assert!(got[0].is_ok());
        match &got[1] {
            Err(rtnetlink::Error::NetlinkError(e)) => assert_eq!(e.raw_code(), -17),
            other => panic!("the second request was refused, got {other:?}"),
        }
        assert!(got[2].is_ok());
    }

    #[test]
    fn a_missing_answer_is_an_error_not_a_success() {
        let error = outcomes(3, vec![answer(1, 0), answer(2, 0)]).unwrap_err();
        assert!(
            error.to_string().contains("3 requests got 2 answers"),
            "{error}"
        );
    }

    #[test]
    fn anything_but_an_acknowledgement_is_unexpected() {
        let mut other = NetlinkMessage::from(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        other.header.sequence_number = 1;
        let got = outcomes(1, vec![other]).unwrap();
        assert!(matches!(
            got[0],
            Err(rtnetlink::Error::UnexpectedMessage(_))
        ));
    }
}
