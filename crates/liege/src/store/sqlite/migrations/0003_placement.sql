-- liege schema v3: the cluster's placement policy (canonical text), fixed like the partition
-- count. NULL in files created before: the first node of this version records its own.
ALTER TABLE cluster_meta ADD COLUMN placement TEXT;
