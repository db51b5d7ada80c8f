-- Models end to end: a rate-limited model is answered (and recorded) RESOURCE_EXHAUSTED, and the
-- tokens a model reports are kept per execution (NULL: the flow reported none) and summed per agent.
ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_error_code_check;
ALTER TABLE executions ADD CONSTRAINT executions_error_code_check
    CHECK (error_code IN ('', 'unavailable', 'deadline_exceeded', 'failed_precondition', 'resource_exhausted'));
ALTER TABLE executions ADD COLUMN prompt_tokens BIGINT CHECK (prompt_tokens >= 0);
ALTER TABLE executions ADD COLUMN completion_tokens BIGINT CHECK (completion_tokens >= 0);
ALTER TABLE agents ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0);
ALTER TABLE agents ADD COLUMN completion_tokens BIGINT NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0);
