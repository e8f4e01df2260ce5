-- What an alert says happened, for the pause reason people read. Alertmanager puts it in the
-- annotations, which the receiver does not keep as a whole; rows recorded before this migration
-- had only the labels' summary (usually none), which is kept where there was one.
ALTER TABLE liquid_abt.notifications ADD COLUMN summary text;

UPDATE liquid_abt.notifications SET summary = labels->>'summary'
WHERE processed_at IS NULL AND labels ? 'summary';
