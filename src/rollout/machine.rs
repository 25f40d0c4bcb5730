//! The pure rollout state machine. (In progress.)
