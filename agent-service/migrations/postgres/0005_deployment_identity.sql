-- This deployment's identity: made once, at random, when the database is set up, so that every
-- replica on this database shares it and a deployment on another database has another. It is
-- the mark on the Langflow flows this deployment makes; its orphan reconciler deletes only
-- flows with this mark (LANGFLOW_DEPLOYMENT_ID, when set, is used instead). One row, always.
CREATE TABLE deployment_identity (
    singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    deployment_id TEXT NOT NULL
);
INSERT INTO deployment_identity (deployment_id) VALUES (replace(gen_random_uuid()::text, '-', ''));
