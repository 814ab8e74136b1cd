//! Remote runners, their jobs and the images they hold.

use super::{Flag, JsonText, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunnerRow {
    pub id: String,
    pub name: String,
    pub region: String,
    pub token_hash: String,
    pub state: String,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub app_version: Option<String>,
    /// JSON of the last reported metrics.
    pub metrics: String,
    pub availability_score: i64,
    pub contact_interval_seconds: i64,
    pub last_checked: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Taken out of placement by an operator.
    #[sqlx(try_from = "Flag")]
    pub unschedulable: bool,
    /// Being emptied before removal: no new sandboxes either.
    #[sqlx(try_from = "Flag")]
    pub draining: bool,
}

/// What a health check records.
#[derive(Debug, Clone)]
pub struct RunnerReport<'a> {
    pub domain: Option<&'a str>,
    pub api_url: Option<&'a str>,
    pub proxy_url: Option<&'a str>,
    pub app_version: &'a str,
    pub metrics: &'a str,
    pub availability_score: i64,
    pub contact_interval_seconds: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub runner_id: String,
    pub job_type: String,
    pub resource_id: String,
    pub payload: String,
    pub state: String,
    pub result: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// The creating request's W3C trace context (`traceparent`, `tracestate`).
    #[sqlx(try_from = "JsonText")]
    pub trace_context: serde_json::Value,
}

/// What the API has placed on a runner: resources of its live sandboxes and how many run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RunnerAllocation {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub started: i64,
}

/// Sandbox states that hold resources on their runner and are not settled elsewhere.
const ON_RUNNER: &str = "state NOT IN ('destroyed', 'archived', 'build_failed', 'pending_build')";

impl Store {
    pub async fn insert_runner(&self, row: &RunnerRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO runners (id, name, region, token_hash, state, domain, api_url, proxy_url,
               app_version, metrics, availability_score, contact_interval_seconds, last_checked,
               created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.region)
        .bind(&row.token_hash)
        .bind(&row.state)
        .bind(&row.domain)
        .bind(&row.api_url)
        .bind(&row.proxy_url)
        .bind(&row.app_version)
        .bind(&row.metrics)
        .bind(row.availability_score)
        .bind(row.contact_interval_seconds)
        .bind(&row.last_checked)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records the default runner (`DEFAULT_RUNNER_*`), or gives the existing one the token
    /// configured now.
    pub async fn ensure_runner(
        &self,
        new_id: &str,
        name: &str,
        region: &str,
        token_hash: &str,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        sqlx::query(
            "INSERT INTO runners (id, name, region, token_hash, state, metrics, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'initializing', '{}', $5, $6)
             ON CONFLICT (region, name) DO UPDATE SET token_hash = $7, updated_at = $8",
        )
        .bind(new_id)
        .bind(name)
        .bind(region)
        .bind(token_hash)
        .bind(&ts)
        .bind(&ts)
        .bind(token_hash)
        .bind(&ts)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn runner_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RunnerRow>, sqlx::Error> {
        sqlx::query_as::<_, RunnerRow>("SELECT * FROM runners WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await
    }

    pub async fn runner_by_id(&self, id: &str) -> Result<Option<RunnerRow>, sqlx::Error> {
        sqlx::query_as::<_, RunnerRow>("SELECT * FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// Every runner, or those of one region, oldest first.
    pub async fn list_runners(&self, region: Option<&str>) -> Result<Vec<RunnerRow>, sqlx::Error> {
        sqlx::query_as::<_, RunnerRow>(
            "SELECT * FROM runners WHERE ($1 IS NULL OR region = $1) ORDER BY created_at, id",
        )
        .bind(region)
        .fetch_all(self.pool())
        .await
    }

    /// Sets the operator's flags that are `Some`; the runner as it is now, `None` when there is
    /// no such runner.
    pub async fn set_runner_flags(
        &self,
        id: &str,
        unschedulable: Option<bool>,
        draining: Option<bool>,
    ) -> Result<Option<RunnerRow>, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        if let Some(flag) = unschedulable {
            sqlx::query("UPDATE runners SET unschedulable = $1, updated_at = $2 WHERE id = $3")
                .bind(flag)
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(flag) = draining {
            sqlx::query("UPDATE runners SET draining = $1, updated_at = $2 WHERE id = $3")
                .bind(flag)
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query_as::<_, RunnerRow>("SELECT * FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Jobs taken by a runner and not updated since `before`, oldest first.
    pub async fn jobs_in_progress_since(&self, before: &str) -> Result<Vec<JobRow>, sqlx::Error> {
        sqlx::query_as::<_, JobRow>(
            "SELECT * FROM runner_jobs WHERE state = 'IN_PROGRESS' AND updated_at < $1
             ORDER BY updated_at, id",
        )
        .bind(before)
        .fetch_all(self.pool())
        .await
    }

    /// Removes a runner with its jobs and image records; false when there was none.
    pub async fn delete_runner(&self, id: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM runner_jobs WHERE runner_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM runner_images WHERE runner_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM runners WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a health check: the runner is `ready` and was heard from now.
    pub async fn record_runner_health(
        &self,
        id: &str,
        report: &RunnerReport<'_>,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        sqlx::query(
            "UPDATE runners SET state = 'ready', domain = COALESCE($1, domain),
               api_url = COALESCE($2, api_url), proxy_url = COALESCE($3, proxy_url),
               app_version = $4, metrics = $5, availability_score = $6,
               contact_interval_seconds = $7, last_checked = $8, updated_at = $9
             WHERE id = $10",
        )
        .bind(report.domain)
        .bind(report.api_url)
        .bind(report.proxy_url)
        .bind(report.app_version)
        .bind(report.metrics)
        .bind(report.availability_score)
        .bind(report.contact_interval_seconds)
        .bind(&ts)
        .bind(&ts)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Notes that a ready runner was heard from (a poll).
    pub async fn touch_runner(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE runners SET last_checked = $1 WHERE id = $2 AND state = 'ready'")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks a ready runner unresponsive unless it was heard from after `last_checked`; true
    /// when this call changed it.
    pub async fn mark_runner_unresponsive(
        &self,
        id: &str,
        last_checked: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE runners SET state = 'unresponsive', updated_at = $1
             WHERE id = $2 AND state = 'ready' AND last_checked = $3",
        )
        .bind(now())
        .bind(id)
        .bind(last_checked)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ids of the sandboxes placed on `runner_id` that still hold resources there.
    pub async fn sandboxes_on_runner(&self, runner_id: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE runner_id = $1
               AND state NOT IN ('destroyed', 'archived', 'build_failed', 'pending_build', 'error')
             ORDER BY id",
        )
        .bind(runner_id)
        .fetch_all(self.pool())
        .await
    }

    /// Ids of every sandbox recorded on `runner_id`, in any state.
    pub async fn sandbox_ids_recorded_on(
        &self,
        runner_id: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE runner_id = $1")
            .bind(runner_id)
            .fetch_all(self.pool())
            .await
    }

    /// Whether `runner_id` has a pending or running job of `job_type` for `resource_id`.
    pub async fn has_unfinished_job(
        &self,
        runner_id: &str,
        job_type: &str,
        resource_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM runner_jobs WHERE runner_id = $1 AND job_type = $2
               AND resource_id = $3 AND state IN ('PENDING', 'IN_PROGRESS')",
        )
        .bind(runner_id)
        .bind(job_type)
        .bind(resource_id)
        .fetch_one(self.pool())
        .await?;
        Ok(count > 0)
    }

    /// Ids of `runner_id`'s sandboxes in `error` whose reason contains `marker` (a failed
    /// operation's reason quotes it after its own words).
    pub async fn sandboxes_failed_with(
        &self,
        runner_id: &str,
        marker: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let escaped = marker
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE runner_id = $1 AND state = 'error'
               AND error_reason LIKE $2 ESCAPE '\\' ORDER BY id",
        )
        .bind(runner_id)
        .bind(format!("%{escaped}%"))
        .fetch_all(self.pool())
        .await
    }

    /// Records the runner a sandbox lives on.
    pub async fn set_sandbox_runner(
        &self,
        sandbox_id: &str,
        runner_id: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET runner_id = $1, updated_at = $2 WHERE id = $3")
            .bind(runner_id)
            .bind(now())
            .bind(sandbox_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Resources of the sandboxes placed on `runner_id`.
    pub async fn runner_allocation(
        &self,
        runner_id: &str,
    ) -> Result<RunnerAllocation, sqlx::Error> {
        sqlx::query_as::<_, RunnerAllocation>(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(cpu), 0) AS BIGINT) AS cpu,
                    CAST(COALESCE(SUM(memory), 0) AS BIGINT) AS memory,
                    CAST(COALESCE(SUM(disk), 0) AS BIGINT) AS disk,
                    CAST(COALESCE(SUM(CASE WHEN state IN ('started', 'creating', 'starting', 'restoring')
                         THEN 1 ELSE 0 END), 0) AS BIGINT) AS started
             FROM sandboxes WHERE runner_id = $1 AND {ON_RUNNER}"
        )))
        .bind(runner_id)
        .fetch_one(self.pool())
        .await
    }

    pub async fn insert_job(&self, row: &JobRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO runner_jobs (id, runner_id, job_type, resource_id, payload, state, result,
               error_message, created_at, updated_at, started_at, completed_at, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&row.id)
        .bind(&row.runner_id)
        .bind(&row.job_type)
        .bind(&row.resource_id)
        .bind(&row.payload)
        .bind(&row.state)
        .bind(&row.result)
        .bind(&row.error_message)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(&row.started_at)
        .bind(&row.completed_at)
        .bind(row.trace_context.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn job_by_id(&self, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
        sqlx::query_as::<_, JobRow>("SELECT * FROM runner_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// `runner_id`'s jobs in `state`, oldest first.
    pub async fn runner_jobs(
        &self,
        runner_id: &str,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRow>, sqlx::Error> {
        sqlx::query_as::<_, JobRow>(
            "SELECT * FROM runner_jobs WHERE runner_id = $1 AND ($2 IS NULL OR state = $2)
             ORDER BY created_at, id LIMIT $3",
        )
        .bind(runner_id)
        .bind(state)
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    /// Takes up to `limit` of `runner_id`'s pending jobs, oldest first, and marks them
    /// `IN_PROGRESS`. Each job is taken by one conditional update, so two API processes never
    /// hand out the same job.
    pub async fn claim_jobs(
        &self,
        runner_id: &str,
        limit: i64,
    ) -> Result<Vec<JobRow>, sqlx::Error> {
        let pending = self.runner_jobs(runner_id, Some("PENDING"), limit).await?;
        let mut claimed = Vec::with_capacity(pending.len());
        for mut job in pending {
            let ts = now();
            let taken = sqlx::query(
                "UPDATE runner_jobs SET state = 'IN_PROGRESS', started_at = $1, updated_at = $2
                 WHERE id = $3 AND state = 'PENDING'",
            )
            .bind(&ts)
            .bind(&ts)
            .bind(&job.id)
            .execute(self.pool())
            .await?;
            if taken.rows_affected() == 1 {
                job.state = "IN_PROGRESS".into();
                job.started_at = Some(ts.clone());
                job.updated_at = ts;
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    /// Finishes an unfinished job of `runner_id` (`COMPLETED` or `FAILED`); false when it was
    /// not unfinished.
    pub async fn finish_job(
        &self,
        id: &str,
        runner_id: &str,
        state: &str,
        result: Option<&str>,
        error_message: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let ts = now();
        let done = sqlx::query(
            "UPDATE runner_jobs SET state = $1, result = $2, error_message = $3, completed_at = $4,
               updated_at = $5
             WHERE id = $6 AND runner_id = $7 AND state IN ('PENDING', 'IN_PROGRESS')",
        )
        .bind(state)
        .bind(result)
        .bind(error_message)
        .bind(&ts)
        .bind(&ts)
        .bind(id)
        .bind(runner_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Fails a job no runner has taken yet (its caller gave up); false when it was taken.
    pub async fn cancel_pending_job(&self, id: &str, reason: &str) -> Result<bool, sqlx::Error> {
        let ts = now();
        let done = sqlx::query(
            "UPDATE runner_jobs SET state = 'FAILED', error_message = $1, completed_at = $2,
               updated_at = $3 WHERE id = $4 AND state = 'PENDING'",
        )
        .bind(reason)
        .bind(&ts)
        .bind(&ts)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The state of `image_ref` on `runner_id` (`pulling`, `ready`, `error`), if recorded.
    pub async fn runner_image_state(
        &self,
        runner_id: &str,
        image_ref: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT state FROM runner_images WHERE runner_id = $1 AND image_ref = $2",
        )
        .bind(runner_id)
        .bind(image_ref)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn set_runner_image_state(
        &self,
        runner_id: &str,
        image_ref: &str,
        state: &str,
        error_reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        sqlx::query(
            "INSERT INTO runner_images (runner_id, image_ref, state, error_reason, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (runner_id, image_ref) DO UPDATE SET state = $6, error_reason = $7,
               updated_at = $8",
        )
        .bind(runner_id)
        .bind(image_ref)
        .bind(state)
        .bind(error_reason)
        .bind(&ts)
        .bind(state)
        .bind(error_reason)
        .bind(&ts)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
