-- liege schema, version 9: the compatibility level of each member's build.
--
-- A node writes only what every live member can read, so each row says what its build
-- reads. Builds from before this version call the six-argument liege_join, which now records
-- level 1 for them; this build calls the seven-argument one with its own level.
ALTER TABLE liege_nodes ADD COLUMN compat smallint NOT NULL DEFAULT 1;

CREATE FUNCTION liege_join(p_name text, p_inc bigint, p_region text, p_cluster_addr text,
                           p_http_addr text, p_ttl bigint, p_compat smallint)
RETURNS TABLE (o_ok boolean, o_now bigint, o_until bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := liege_now_ms();
    v_end bigint;
BEGIN
    INSERT INTO liege_nodes AS n (name, incarnation, region, cluster_addr, http_addr,
                                  lease_expires_at, has_left, compat)
    VALUES (p_name, p_inc, p_region, p_cluster_addr, p_http_addr,
            liege_lease_end(v_now, p_ttl), false, p_compat)
    ON CONFLICT (name) DO UPDATE
        SET incarnation = EXCLUDED.incarnation, region = EXCLUDED.region,
            cluster_addr = EXCLUDED.cluster_addr, http_addr = EXCLUDED.http_addr,
            lease_expires_at = EXCLUDED.lease_expires_at, has_left = false,
            compat = EXCLUDED.compat
        WHERE n.incarnation = EXCLUDED.incarnation OR n.has_left
           OR n.lease_expires_at <= v_now
    RETURNING n.lease_expires_at INTO v_end;
    IF FOUND THEN
        PERFORM pg_notify('liege_changes', 'membership');
        RETURN QUERY SELECT true, v_now, v_end;
    ELSE
        RETURN QUERY SELECT false, v_now, n.lease_expires_at - v_now
                     FROM liege_nodes n WHERE n.name = p_name;
    END IF;
END $$;

-- The join of older builds: the same, at level 1 (a node taking its name back on an older
-- build must not keep the level its newer build wrote).
CREATE OR REPLACE FUNCTION liege_join(p_name text, p_inc bigint, p_region text,
                                      p_cluster_addr text, p_http_addr text, p_ttl bigint)
RETURNS TABLE (o_ok boolean, o_now bigint, o_until bigint)
LANGUAGE sql AS $$
    SELECT * FROM liege_join(p_name, p_inc, p_region, p_cluster_addr, p_http_addr, p_ttl,
                             1::smallint)
$$;
