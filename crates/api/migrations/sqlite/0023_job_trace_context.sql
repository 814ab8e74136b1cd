-- The W3C trace context (traceparent, tracestate) of the request that created a job, as a JSON
-- object, so the runner's execution of the job continues that trace.
ALTER TABLE runner_jobs ADD COLUMN trace_context TEXT NOT NULL DEFAULT '{}';
