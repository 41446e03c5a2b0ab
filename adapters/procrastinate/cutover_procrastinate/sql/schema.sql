-- The adapter's own table, beside procrastinate's, in the same schema (search_path). It keeps
-- what procrastinate_jobs has no column for, so nothing about a job is lost on the way in:
-- its cutover id, its own retry budget and backoff, positional args, the error and the result.
CREATE TABLE IF NOT EXISTS cutover_jobs (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    cutover_id text NOT NULL UNIQUE,
    max_attempts integer NOT NULL DEFAULT 1,
    retry_intervals jsonb NOT NULL DEFAULT '[]',
    positional jsonb,
    origin text NOT NULL DEFAULT 'procrastinate',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    held_by text,
    held_scheduled_at timestamptz,
    error text,
    result jsonb
);
CREATE INDEX IF NOT EXISTS cutover_jobs_held_by_idx ON cutover_jobs (held_by)
    WHERE held_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS cutover_paused (queue text PRIMARY KEY);
