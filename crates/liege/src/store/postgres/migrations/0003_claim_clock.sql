-- liege schema, version 3: claims and renewals read the clock once, after the row locks that
-- make their decision final.
--
-- Before: a claim compared each owner's lease with clock_timestamp() read per row, against
-- node rows from the statement's snapshot; a renewal computed "now" before waiting for its row
-- lock. A claim running longer than the lease margin could take a partition whose owner had
-- renewed after the snapshot, and a renewal that waited behind a claim could extend a lease
-- the claim had judged expired. Now a claim share-locks the node rows it reads (its own and
-- every current owner's) and then reads the clock once; a renewal locks its row and then reads
-- the clock. Whichever locks first, the other sees its outcome.

CREATE OR REPLACE FUNCTION liege_claim(p_name text, p_inc bigint, p_parts bigint[])
RETURNS TABLE (o_id bigint, o_epoch bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint;
BEGIN
    -- Directory rows first, in id order (as fenced writes and releases lock them): waits for
    -- every fenced write holding FOR SHARE on them, and makes later writers wait for us.
    PERFORM 1 FROM liege_partitions p WHERE p.id = ANY (p_parts) ORDER BY p.id FOR UPDATE;
    -- Then the node rows the decision reads, in name order: ours, so a takeover of our name
    -- cannot commit under us, and every current owner's, so no renewal can commit until we do.
    PERFORM 1 FROM liege_nodes n
    WHERE n.name = p_name
       OR n.name IN (SELECT p.owner_name FROM liege_partitions p WHERE p.id = ANY (p_parts))
    ORDER BY n.name FOR SHARE;
    -- One clock reading, after every lock: nothing the decision reads can change before commit.
    v_now := liege_now_ms();
    IF NOT EXISTS (SELECT 1 FROM liege_nodes n
                   WHERE n.name = p_name AND n.incarnation = p_inc
                     AND n.lease_expires_at > v_now) THEN
        RAISE EXCEPTION 'lease lost' USING ERRCODE = 'LG001';
    END IF;
    RETURN QUERY
    UPDATE liege_partitions p
    SET owner_name = p_name, owner_incarnation = p_inc, epoch = p.epoch + 1
    WHERE p.id = ANY (p_parts)
      AND (p.owner_name IS NULL OR NOT EXISTS (
            SELECT 1 FROM liege_nodes n
            WHERE n.name = p.owner_name AND n.incarnation = p.owner_incarnation
              AND n.lease_expires_at > v_now))
    RETURNING p.id, p.epoch;
    IF FOUND THEN
        PERFORM pg_notify('liege_changes', 'directory');
    END IF;
END $$;

-- Extends the lease of exactly this incarnation if it has not expired, judged by the clock
-- read after the row lock (so after any claim that share-locked the row committed).
CREATE FUNCTION liege_renew(p_name text, p_inc bigint, p_ttl bigint)
RETURNS TABLE (o_now bigint, o_until bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint;
BEGIN
    PERFORM 1 FROM liege_nodes n WHERE n.name = p_name AND n.incarnation = p_inc FOR UPDATE;
    v_now := liege_now_ms();
    RETURN QUERY
    UPDATE liege_nodes n SET lease_expires_at = liege_lease_end(v_now, p_ttl)
    WHERE n.name = p_name AND n.incarnation = p_inc AND n.lease_expires_at > v_now
    RETURNING v_now, n.lease_expires_at;
END $$;
