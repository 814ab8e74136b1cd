-- Where every runner finds a snapshot's image when it is not `image_name`: the internal
-- registry's reference a runner pushed the pulled image to (INTERNAL_REGISTRY_*).
ALTER TABLE snapshots ADD COLUMN internal_ref TEXT;
