//! Shared-memory ring between the interceptor in each application process and its local agent.
