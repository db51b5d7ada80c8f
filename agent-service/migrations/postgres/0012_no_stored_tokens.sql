-- Reports to workflow-service now go with agent-service's own service identity (issue 14), so
-- no caller's bearer token is kept any more. Reports still waiting in the outbox stay and are
-- delivered as the service; only the tokens go.
ALTER TABLE execution_reports DROP COLUMN credentials;
ALTER TABLE executions DROP COLUMN report_credentials;
ALTER TABLE runs DROP COLUMN report_credentials;
