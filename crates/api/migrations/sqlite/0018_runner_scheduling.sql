-- Operators take a runner out of placement (`unschedulable`) or drain it before removal
-- (`draining`): neither gets new sandboxes; sandboxes already there keep working.
ALTER TABLE runners ADD COLUMN unschedulable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runners ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
