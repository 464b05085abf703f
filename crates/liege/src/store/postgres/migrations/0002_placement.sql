-- liege schema, version 2: the cluster's placement policy (canonical text), fixed like the
-- partition count. NULL in databases created before: the first node of this version records
-- its own.
ALTER TABLE liege_meta ADD COLUMN placement text;

DROP FUNCTION liege_init_cluster(bigint, bytea, bytea);

-- Creates the cluster unless it exists (recording a placement if none was); returns the
-- stored facts.
CREATE FUNCTION liege_init_cluster(p_partitions bigint, p_salt bytea, p_verifier bytea,
                                   p_placement text)
RETURNS TABLE (o_partitions bigint, o_salt bytea, o_verifier bytea, o_placement text)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO liege_meta (singleton, partitions, secret_salt, secret_verifier, placement)
    VALUES (true, p_partitions, p_salt, p_verifier, p_placement)
    ON CONFLICT (singleton) DO NOTHING;
    -- New statements, so a concurrent creator's committed meta is visible here.
    UPDATE liege_meta SET placement = p_placement WHERE placement IS NULL;
    INSERT INTO liege_partitions (id, epoch)
    SELECT g, 0 FROM liege_meta m, generate_series(0, m.partitions - 1) AS g
    ON CONFLICT (id) DO NOTHING;
    RETURN QUERY SELECT m.partitions, m.secret_salt, m.secret_verifier, m.placement
                 FROM liege_meta m;
END $$;

-- Replaces the placement only while no node holds a live lease. The SHARE lock on the node
-- table waits for joins and renewals in progress and blocks new ones until this commits, so
-- no node can join between the check and the change. Returns the names of live nodes (empty:
-- changed).
CREATE FUNCTION liege_set_placement(p_placement text)
RETURNS TABLE (o_live text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint;
BEGIN
    LOCK TABLE liege_nodes IN SHARE MODE;
    v_now := liege_now_ms();
    RETURN QUERY SELECT n.name FROM liege_nodes n WHERE n.lease_expires_at > v_now
                 ORDER BY n.name;
    IF NOT FOUND THEN
        UPDATE liege_meta SET placement = p_placement;
    END IF;
END $$;
