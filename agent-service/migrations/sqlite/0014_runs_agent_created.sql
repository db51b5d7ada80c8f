-- ListRuns by agent reads an agent's newest runs first: with this index a page is the next rows
-- of one index range, whatever the agent's history. Before it, the planner found the agent's
-- runs through runs_agent (agent_id, status) and sorted all of them for every page: a cost that
-- grew with the agent's runs (issue 16's scale benchmark).
CREATE INDEX runs_agent_created ON runs (agent_id, created_at DESC, id DESC);
