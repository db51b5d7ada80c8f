-- The authorization header of the caller who started a run (StartRun), kept while the run lasts:
-- its llm steps are executions of the agent, whose reports to workflow-service go with it. Empty
-- for a scheduled run (nobody started it) and in development mode. Cleared when the run ends.
ALTER TABLE runs ADD COLUMN report_credentials TEXT NOT NULL DEFAULT '';
