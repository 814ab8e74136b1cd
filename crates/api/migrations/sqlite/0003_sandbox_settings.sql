-- Settings the SDK can change after create.
ALTER TABLE sandboxes ADD COLUMN domain_allow_list TEXT;
ALTER TABLE sandboxes ADD COLUMN auto_destroy_at TEXT;
