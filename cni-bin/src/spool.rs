//! DEL requests queued while the agent is down, replayed by the agent when it is back.
