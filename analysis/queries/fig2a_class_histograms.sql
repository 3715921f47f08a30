-- Figure 2a: sorted per-class positive-flip histograms for a weak, an equal and a strong teacher of
-- one student.
-- The student is the one with per-class flips for the most trained (non-random) teachers, ties broken by
-- the widest delta_acc spread, then by name. Its teachers get the roles:
--   weak = lowest delta_acc, equal = delta_acc closest to 0, strong = highest delta_acc
-- (with fewer than three teachers a teacher can fill two roles). Per role, one row per class with at
-- least one positive flip (the score stage stores only classes with a flip either way; classes without a
-- positive flip are the histogram's zero tail), sorted by positive flips (rank 1 = most; ties by
-- class_id); share = the class's share of the pair's positive flips.
-- Reads: pairs, pair_classes.
WITH trained AS (
    SELECT p.*
    FROM pairs p
    WHERE NOT p.teacher_is_random
      AND p.teacher <> p.student
      AND EXISTS (SELECT 1 FROM pair_classes c
                  WHERE c.teacher = p.teacher AND c.student = p.student AND c.pos_flips > 0)
),
chosen_student AS (
    SELECT student
    FROM trained
    GROUP BY student
    ORDER BY count(DISTINCT teacher) DESC, max(delta_acc) - min(delta_acc) DESC, student
    LIMIT 1
),
candidates AS (
    SELECT t.* FROM trained t JOIN chosen_student USING (student)
),
roles AS (
    SELECT 'weak' AS role, 1 AS role_order, teacher, student, delta_acc, rho_pos, entropy
    FROM (SELECT * FROM candidates ORDER BY delta_acc ASC, teacher LIMIT 1)
    UNION ALL
    SELECT 'equal', 2, teacher, student, delta_acc, rho_pos, entropy
    FROM (SELECT * FROM candidates ORDER BY abs(delta_acc), teacher LIMIT 1)
    UNION ALL
    SELECT 'strong', 3, teacher, student, delta_acc, rho_pos, entropy
    FROM (SELECT * FROM candidates ORDER BY delta_acc DESC, teacher LIMIT 1)
)
SELECT
    r.role,
    r.role_order,
    r.teacher,
    r.student,
    100 * r.delta_acc AS delta_acc_pp,
    100 * r.rho_pos   AS rho_pos_pct,
    r.entropy,
    row_number() OVER (PARTITION BY r.role ORDER BY c.pos_flips DESC, c.class_id) AS rank,
    c.class_id,
    c.pos_flips,
    c.pos_flips::DOUBLE / nullif(sum(c.pos_flips) OVER (PARTITION BY r.role), 0) AS share
FROM roles r
JOIN pair_classes c ON c.teacher = r.teacher AND c.student = r.student AND c.pos_flips > 0
ORDER BY r.role_order, rank;
