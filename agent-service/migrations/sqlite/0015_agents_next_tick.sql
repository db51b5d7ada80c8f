-- When the scheduler next has to look at the agent: the earliest next tick of its scheduled
-- triggers, written by the pass that handled the agent's ticks up to then. NULL: not worked out
-- yet (a new agent, one whose snapshot or status changed since, every row from before this
-- column): the next pass reads it. A pass reads the agents due through this index, instead of
-- every scheduled agent with its snapshot every second (issue 16's scale benchmark: 10,000
-- scheduled agents cost each process a pass of over 100 ms a second).
ALTER TABLE agents ADD COLUMN next_tick_at TEXT;
CREATE INDEX agents_next_tick ON agents (next_tick_at) WHERE status = 'active' AND scheduled = TRUE;
