-- Figure 10: can a teacher trained on another domain still teach? Teachers fine-tuned on other data of
-- the same classes (zoo.cross_domain: e.g. the generated data rendered as sketches) against teachers of
-- the students' own domain, for KL-Dist and KL+DP: delta_transf (pp, with its 95% paired score interval)
-- against delta_acc (pp) on the students' data. teacher_domain is the data the teacher was adapted on
-- when it differs from the student's, else 'same domain'. Shown when any cross-domain teacher exists.
-- Reads: paper_transfers, pairs, models.
WITH rows AS (
    SELECT
        CASE
            WHEN coalesce(json_extract_string(mt.recipe_json, '$.adapted.dataset'), '')
                 <> coalesce(json_extract_string(ms.recipe_json, '$.adapted.dataset'), '')
            THEN json_extract_string(mt.recipe_json, '$.adapted.dataset')
            ELSE 'same domain'
        END                     AS teacher_domain,
        t.method,
        t.teacher,
        t.student,
        100 * p.delta_acc       AS delta_acc_pp,
        100 * t.delta_last      AS delta_pp,
        100 * t.delta_ci_low    AS delta_ci_low_pp,
        100 * t.delta_ci_high   AS delta_ci_high_pp,
        t.n_eval
    FROM paper_transfers AS t
    JOIN pairs AS p ON p.teacher = t.teacher AND p.student = t.student
    LEFT JOIN models AS mt ON mt.model_id = t.teacher
    LEFT JOIN models AS ms ON ms.model_id = t.student
    WHERE t.mode = 'single' AND t.study_part = 'transfer' AND t.method IN ('kl', 'kl_dp')
)
SELECT *
FROM rows
WHERE EXISTS (SELECT 1 FROM rows WHERE teacher_domain <> 'same domain')
ORDER BY teacher_domain = 'same domain', teacher_domain, method, delta_acc_pp;
