-- Members file, version 3: the compatibility level of each member's build. Older builds
-- replace their row without naming the column, so their rows read as level 1.
ALTER TABLE nodes ADD COLUMN compat INTEGER NOT NULL DEFAULT 1;
