-- PostgreSQL twin of sqlite/0018_runner_scheduling.sql.
ALTER TABLE runners ADD COLUMN unschedulable BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE runners ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;
