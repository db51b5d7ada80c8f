-- Each tenant's default model: the model settings CreateAgentFromWorkflow and ProvisionAgents give
-- an agent whose configuration names none. At most one row per tenant; clearing the default
-- stores an empty model (so who cleared it, and when, is kept). `model` holds the settings as
-- the agents' configuration column holds them: a credential appears only as a reference (a
-- variable's name), never a key.
CREATE TABLE tenant_default_models (
    tenant_id  TEXT PRIMARY KEY,
    model      JSONB NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version    BIGINT NOT NULL CHECK (version >= 1)
);
