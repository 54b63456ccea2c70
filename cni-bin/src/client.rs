//! The plugin side of the agent protocol: connect, send the request (and the netns), read the reply.
