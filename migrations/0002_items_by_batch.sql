-- A batch's items in their job-file order: the manifest rewrite, the report and the exports walk
-- them this way, which without this index meant sorting every row of the batch in memory.
CREATE INDEX items_by_batch ON items (batch, seq);
