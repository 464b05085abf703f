-- liege schema v2: membership moved to its own file (`<path>-members`, see
-- migrations/members/). Lease renewals then never wait for the main file's write lock, which
-- checkpoint batches of every process hold most of the time under load. The rows of the old
-- table are copied to the members file, under this file's write lock, before it is dropped.
DROP TABLE nodes;
