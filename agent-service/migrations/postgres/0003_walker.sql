-- Walker runs. A run's whole state lives here (never in a process's memory): workers in any
-- agent-service process claim runnable runs with a lease, do one step, record its outcome and
-- its event in one transaction, and release the lease. A process that dies leaves a lease that
-- expires, and the run is picked up again where it was.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    agent_id         TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'waiting_review', 'succeeded', 'failed',
                         'rejected', 'cancelled')),
    trigger_kind     TEXT NOT NULL CHECK (trigger_kind IN ('manual', 'scheduled')),
    input            TEXT NOT NULL,
    output           TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    -- The step a worker does next (= the number of steps done).
    current_step     INTEGER NOT NULL DEFAULT 0 CHECK (current_step >= 0),
    -- The rules of the pinned snapshot, copied at start: an upgrade of the agent does not change
    -- a run under way.
    max_retries      INTEGER NOT NULL CHECK (max_retries >= 0),
    approval_required BOOLEAN NOT NULL,
    review_timeout_secs BIGINT NOT NULL CHECK (review_timeout_secs > 0),
    review_default_action TEXT NOT NULL CHECK (review_default_action IN ('approve', 'reject')),
    -- StartRun's idempotency key: a retry answers the run it started.
    request_id       TEXT,
    fingerprint      TEXT,
    -- For scheduled runs: the tick that started it.
    scheduled_for    TIMESTAMPTZ,
    -- Who holds the run (a token per claim) and until when; NULL when nobody does.
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    -- Not before then (a retry's backoff).
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    UNIQUE (tenant_id, request_id)
);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at, id);
CREATE INDEX runs_agent ON runs (agent_id, status);
-- What workers look for: runnable runs by age.
CREATE INDEX runs_runnable ON runs (status, next_attempt_at, created_at);

-- The steps of each run, copied from the agent's pinned snapshot when the run starts.
CREATE TABLE run_steps (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_index   INTEGER NOT NULL CHECK (step_index >= 0),
    step_id      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('llm', 'review', 'output')),
    prompt       TEXT NOT NULL DEFAULT '',
    -- For review steps: the step whose output is under review.
    reviews_index INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'running', 'waiting_review', 'succeeded', 'failed',
                     'rejected', 'skipped')),
    input        TEXT NOT NULL DEFAULT '',
    output       TEXT NOT NULL DEFAULT '',
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error        TEXT NOT NULL DEFAULT '',
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (run_id, step_index)
);

-- What happened to each run, numbered from 1 without gaps: each event is written in the
-- transaction of the change it records, under the run's row lock, as 1 + the run's last number.
CREATE TABLE run_events (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    sequence   BIGINT NOT NULL CHECK (sequence >= 1),
    kind       TEXT NOT NULL,
    step_id    TEXT NOT NULL DEFAULT '',
    detail     TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, sequence)
);

-- A person's check of a step's output. One per (run, step): a step is reviewed once.
CREATE TABLE reviews (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    run_id         TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    agent_id       TEXT NOT NULL,
    step_index     INTEGER NOT NULL,
    step_id        TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    output         TEXT NOT NULL,
    edited_output  TEXT,
    deadline       TIMESTAMPTZ NOT NULL,
    default_action TEXT NOT NULL CHECK (default_action IN ('approve', 'reject')),
    created_at     TIMESTAMPTZ NOT NULL,
    decided_at     TIMESTAMPTZ,
    UNIQUE (run_id, step_index)
);
CREATE INDEX reviews_tenant_pending ON reviews (tenant_id, status, created_at, id);
CREATE INDEX reviews_deadline ON reviews (status, deadline);

-- The claim that makes a scheduled tick fire once across every process: the first insert of
-- (agent, tick) wins (ON CONFLICT DO NOTHING), in the transaction that creates the tick's run.
-- run_id is NULL for a tick skipped because a run of the agent was still going.
CREATE TABLE schedule_ticks (
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    tick_at    TIMESTAMPTZ NOT NULL,
    run_id     TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent_id, tick_at)
);
