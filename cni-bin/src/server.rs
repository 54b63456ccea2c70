//! The agent side of the protocol (tokio): read a request and its netns descriptor, write the reply.
