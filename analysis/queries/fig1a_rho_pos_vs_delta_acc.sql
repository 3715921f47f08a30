-- Figure 1a: complementary knowledge (rho_pos) against the performance difference (delta_acc).
-- One row per scored (teacher, student) pair, in percent:
--   rho_pos_pct  = share of eval samples the teacher gets right and the student wrong (positive flips)
--   delta_acc_pp = acc(teacher) - acc(student), percentage points
-- teacher_is_random marks noise-floor pairs (a randomly initialised teacher); the figure draws them apart.
-- Reads: pairs.
SELECT
    teacher,
    student,
    teacher_is_random,
    100 * delta_acc AS delta_acc_pp,
    100 * rho_pos   AS rho_pos_pct,
    100 * rho_neg   AS rho_neg_pct,
    n_samples
FROM pairs
WHERE teacher <> student
ORDER BY teacher_is_random, delta_acc, teacher, student;
