-- Figure 4a: transfer success rate per method, one value per student (the figure draws a box per method).
-- success rate of a student = share of its teachers whose transfer ends above where the student started
-- (delta_last > 0), over the real number of teachers it was paired with. Repeated runs of one
-- (method, student, teacher) - several seeds - are averaged first, so each teacher counts once.
-- Single-teacher transfers only. method is method_key(): '_unsup' appended for unsupervised runs.
-- Reads: transfers.
WITH per_teacher AS (
    SELECT
        method_key(method, hparams_json) AS method,
        student,
        teacher,
        avg(delta_last) AS delta_last,
        count(*)        AS n_runs
    FROM transfers
    WHERE study_part = 'transfer' AND mode = 'single'
    GROUP BY ALL
)
SELECT
    method,
    student,
    count(*)                                              AS n_teachers,
    count(*) FILTER (WHERE delta_last > 0)                AS n_positive,
    100.0 * count(*) FILTER (WHERE delta_last > 0) / count(*) AS success_rate_pct,
    100 * avg(delta_last)                                 AS mean_delta_pp,
    sum(n_runs)                                           AS n_runs
FROM per_teacher
GROUP BY method, student
ORDER BY method, student;
