-- liege schema, version 1. Applied once per database under an advisory lock.
-- Times are bigint milliseconds of the server's clock (liege_now_ms), never the client's.

CREATE FUNCTION liege_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- now + ttl, saturating at the largest bigint instead of failing.
CREATE FUNCTION liege_lease_end(p_now bigint, p_ttl bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS
$$ SELECT LEAST(p_now::numeric + p_ttl, 9223372036854775807)::bigint $$;

CREATE TABLE liege_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions bigint NOT NULL,
    secret_salt bytea NOT NULL,
    secret_verifier bytea NOT NULL
);

CREATE TABLE liege_nodes (
    name text PRIMARY KEY,
    incarnation bigint NOT NULL,          -- u64 stored bit for bit
    region text NOT NULL,
    cluster_addr text NOT NULL,
    http_addr text NOT NULL,
    lease_expires_at bigint NOT NULL,
    has_left boolean NOT NULL DEFAULT false
);

CREATE TABLE liege_partitions (
    id bigint PRIMARY KEY,
    owner_name text,
    owner_incarnation bigint,
    epoch bigint NOT NULL DEFAULT 0
);

CREATE TABLE liege_checkpoints (
    kind text NOT NULL,
    id text NOT NULL,
    rev bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE liege_audit (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL,
    id text NOT NULL,
    partition bigint NOT NULL,
    epoch bigint NOT NULL,
    writer_name text NOT NULL,
    writer_incarnation bigint NOT NULL,
    rev bigint NOT NULL
);

-- Creates the cluster unless it exists; returns the stored facts.
CREATE FUNCTION liege_init_cluster(p_partitions bigint, p_salt bytea, p_verifier bytea)
RETURNS TABLE (o_partitions bigint, o_salt bytea, o_verifier bytea)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO liege_meta (singleton, partitions, secret_salt, secret_verifier)
    VALUES (true, p_partitions, p_salt, p_verifier)
    ON CONFLICT (singleton) DO NOTHING;
    -- A new statement, so a concurrent creator's committed meta is visible here.
    INSERT INTO liege_partitions (id, epoch)
    SELECT g, 0 FROM liege_meta m, generate_series(0, m.partitions - 1) AS g
    ON CONFLICT (id) DO NOTHING;
    RETURN QUERY SELECT m.partitions, m.secret_salt, m.secret_verifier FROM liege_meta m;
END $$;

-- Inserts or takes over the row of a name; o_ok = false means a live other incarnation
-- holds it for o_until more milliseconds.
CREATE FUNCTION liege_join(p_name text, p_inc bigint, p_region text, p_cluster_addr text,
                           p_http_addr text, p_ttl bigint)
RETURNS TABLE (o_ok boolean, o_now bigint, o_until bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := liege_now_ms();
    v_end bigint;
BEGIN
    INSERT INTO liege_nodes AS n (name, incarnation, region, cluster_addr, http_addr,
                                  lease_expires_at, has_left)
    VALUES (p_name, p_inc, p_region, p_cluster_addr, p_http_addr,
            liege_lease_end(v_now, p_ttl), false)
    ON CONFLICT (name) DO UPDATE
        SET incarnation = EXCLUDED.incarnation, region = EXCLUDED.region,
            cluster_addr = EXCLUDED.cluster_addr, http_addr = EXCLUDED.http_addr,
            lease_expires_at = EXCLUDED.lease_expires_at, has_left = false
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

-- Claims the claimable partitions of p_parts for (p_name, p_inc).
-- Raises LG001 when the claimer's own lease is not valid.
CREATE FUNCTION liege_claim(p_name text, p_inc bigint, p_parts bigint[])
RETURNS TABLE (o_id bigint, o_epoch bigint)
LANGUAGE plpgsql AS $$
BEGIN
    -- Our own row, shared-locked so a takeover of our name cannot commit under us.
    PERFORM 1 FROM liege_nodes n
    WHERE n.name = p_name AND n.incarnation = p_inc AND n.lease_expires_at > liege_now_ms()
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease lost' USING ERRCODE = 'LG001';
    END IF;
    -- Exclusive row locks in id order: waits for every fenced write holding FOR SHARE on
    -- these rows to commit, and makes later writers wait for us.
    PERFORM 1 FROM liege_partitions p WHERE p.id = ANY (p_parts) ORDER BY p.id FOR UPDATE;
    -- A new statement and so a new snapshot: it sees the latest committed owners, which
    -- nobody can change any more until we commit.
    RETURN QUERY
    UPDATE liege_partitions p
    SET owner_name = p_name, owner_incarnation = p_inc, epoch = p.epoch + 1
    WHERE p.id = ANY (p_parts)
      AND (p.owner_name IS NULL OR NOT EXISTS (
            SELECT 1 FROM liege_nodes n
            WHERE n.name = p.owner_name AND n.incarnation = p.owner_incarnation
              AND n.lease_expires_at > liege_now_ms()))
    RETURNING p.id, p.epoch;
    IF FOUND THEN
        PERFORM pg_notify('liege_changes', 'directory');
    END IF;
END $$;

-- Releases the partitions still held by (p_name, p_inc) at the given epochs.
CREATE FUNCTION liege_release(p_name text, p_inc bigint, p_parts bigint[], p_epochs bigint[])
RETURNS TABLE (o_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM liege_partitions p WHERE p.id = ANY (p_parts) ORDER BY p.id FOR UPDATE;
    RETURN QUERY
    UPDATE liege_partitions p SET owner_name = NULL, owner_incarnation = NULL
    FROM unnest(p_parts, p_epochs) AS r (pid, pepoch)
    WHERE p.id = r.pid AND p.epoch = r.pepoch
      AND p.owner_name = p_name AND p.owner_incarnation = p_inc
    RETURNING p.id;
    IF FOUND THEN
        PERFORM pg_notify('liege_changes', 'directory');
    END IF;
END $$;

-- Applies a batch of fenced checkpoint writes in the caller's transaction (one statement).
-- The arrays hold the writes sorted into rounds: each round touches a key at most once, and
-- the n-th write of a key in the batch is in round n, so writes of one key apply in order.
-- p_round_ends[r] is the (1-based, inclusive) array position where round r ends; p_idx is
-- each write's position in the caller's batch. Returns one row per write: o_status 0 =
-- committed (o_rev = new revision), 1 = fenced (o_owner/o_inc/o_epoch = the directory now),
-- 2 = revision conflict (o_rev = actual).
CREATE FUNCTION liege_write(p_idx bigint[], p_part bigint[], p_epoch bigint[], p_wname text[],
                            p_winc bigint[], p_kind text[], p_id text[], p_exp bigint[],
                            p_data bytea[], p_round_ends integer[], p_audit boolean)
RETURNS TABLE (o_idx bigint, o_status integer, o_rev bigint, o_owner text, o_inc bigint,
               o_epoch bigint)
LANGUAGE plpgsql
-- A batch touches a few hundred rows by primary key: index lookups, never a scan of the
-- whole checkpoint table (which the planner otherwise picks for mid-sized tables).
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_lo integer := 1;
    v_hi integer;
BEGIN
    -- The fence: shared row locks on the directory rows, held until commit. A claim takes
    -- FOR UPDATE on the same rows, so it waits for this batch or this batch waits for it.
    PERFORM 1 FROM liege_partitions p WHERE p.id = ANY (p_part) ORDER BY p.id FOR SHARE;
    -- The existing checkpoints, locked in key order so the revision read below is exact.
    PERFORM 1 FROM liege_checkpoints c
    JOIN unnest(p_kind, p_id) AS k (kind, id) ON c.kind = k.kind AND c.id = k.id
    ORDER BY c.kind, c.id FOR UPDATE OF c;
    FOREACH v_hi IN ARRAY p_round_ends LOOP
        -- Each statement takes a new snapshot: it sees the locked directory rows as they
        -- are now (no claim can commit until we do) and the effects of earlier rounds.
        RETURN QUERY
        WITH inp AS MATERIALIZED (
            SELECT t.* FROM unnest(p_idx[v_lo:v_hi], p_part[v_lo:v_hi], p_epoch[v_lo:v_hi],
                                   p_wname[v_lo:v_hi], p_winc[v_lo:v_hi], p_kind[v_lo:v_hi],
                                   p_id[v_lo:v_hi], p_exp[v_lo:v_hi], p_data[v_lo:v_hi])
                AS t (idx, part, wepoch, wname, winc, kind, kid, exp, data)
        ), chk AS MATERIALIZED (
            SELECT i.*, p.owner_name AS owner, p.owner_incarnation AS oinc,
                   coalesce(p.epoch, 0) AS pepoch, coalesce(c.rev, 0) AS cur,
                   coalesce(p.owner_name = i.wname AND p.owner_incarnation = i.winc
                            AND p.epoch = i.wepoch, false) AS fence_ok
            FROM inp i
            LEFT JOIN liege_partitions p ON p.id = i.part
            LEFT JOIN liege_checkpoints c ON c.kind = i.kind AND c.id = i.kid
        ), ok AS MATERIALIZED (
            SELECT * FROM chk WHERE fence_ok AND cur = exp
        ), ups AS (
            INSERT INTO liege_checkpoints AS c (kind, id, rev, data)
            SELECT ok.kind, ok.kid, ok.exp + 1, ok.data FROM ok
            WHERE ok.data IS NOT NULL ORDER BY ok.kind, ok.kid
            ON CONFLICT (kind, id) DO UPDATE SET rev = EXCLUDED.rev, data = EXCLUDED.data
                WHERE c.rev = EXCLUDED.rev - 1
            RETURNING c.kind, c.id
        ), dels AS (
            DELETE FROM liege_checkpoints c USING ok
            WHERE ok.data IS NULL AND c.kind = ok.kind AND c.id = ok.kid AND c.rev = ok.exp
            RETURNING c.kind
        ), done AS MATERIALIZED (
            SELECT ok.idx, CASE WHEN ok.data IS NULL THEN 0 ELSE ok.exp + 1 END AS newrev,
                   ok.kind, ok.kid, ok.part, ok.wepoch, ok.wname, ok.winc
            FROM ok
            WHERE ok.data IS NULL
               OR EXISTS (SELECT 1 FROM ups WHERE ups.kind = ok.kind AND ups.id = ok.kid)
        ), aud AS (
            INSERT INTO liege_audit (kind, id, partition, epoch, writer_name,
                                     writer_incarnation, rev)
            SELECT d.kind, d.kid, d.part, d.wepoch, d.wname, d.winc, d.newrev
            FROM done d WHERE p_audit ORDER BY d.idx
            RETURNING seq
        )
        SELECT chk.idx,
               CASE WHEN NOT chk.fence_ok THEN 1 WHEN d.idx IS NULL THEN 2 ELSE 0 END,
               coalesce(d.newrev, chk.cur), chk.owner, chk.oinc, chk.pepoch
        FROM chk LEFT JOIN done d ON d.idx = chk.idx;
        v_lo := v_hi + 1;
    END LOOP;
END $$;
