//! Learning-rate schedules at known steps, against torch.optim.lr_scheduler's values.
use kiln_nn::schedule::LrSchedule;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
}

fn assert_lrs(schedule: &LrSchedule, expected: &[(u64, f64)]) {
    for &(step, lr) in expected {
        let got = schedule.lr(step);
        assert!(close(got, lr), "{schedule:?} at step {step}: got {got}, expected {lr}");
    }
}

#[test]
fn constant() {
    assert_lrs(&LrSchedule::constant(0.3), &[(0, 0.3), (1, 0.3), (1_000_000, 0.3)]);
}

#[test]
fn step_decay() {
    // StepLR(step_size=3, gamma=0.1): 0.1 for steps 0-2, 0.01 for 3-5, 0.001 from 6.
    let s = LrSchedule::step(0.1, 3, 0.1).unwrap();
    assert_lrs(&s, &[(0, 0.1), (2, 0.1), (3, 0.1 * 0.1), (5, 0.1 * 0.1), (6, 0.1 * 0.1 * 0.1)]);
    assert!(LrSchedule::step(0.1, 0, 0.1).is_err());
}

#[test]
fn cosine_annealing() {
    let (lr, eta_min, t_max) = (0.1, 0.001, 100);
    let s = LrSchedule::cosine(lr, t_max, eta_min).unwrap();
    assert_lrs(
        &s,
        &[
            (0, lr),
            // Halfway the cosine is 0: the mean of the two ends.
            (50, (lr + eta_min) / 2.0),
            // A quarter of the way: eta_min + (lr - eta_min) * (1 + cos(pi/4)) / 2.
            (25, eta_min + (lr - eta_min) * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0),
            (100, eta_min),
            // Past T_max PyTorch's closed form rises again, symmetric about T_max.
            (150, (lr + eta_min) / 2.0),
        ],
    );
    assert!(LrSchedule::cosine(0.1, 0, 0.0).is_err());
}

#[test]
fn linear_warmup_then_cosine() {
    // LinearLR(start_factor=0.1, total_iters=10) then CosineAnnealingLR(T_max=20) via
    // SequentialLR(milestones=[10]): the cosine starts at its own step 0.
    let cosine = LrSchedule::cosine(1.0, 20, 0.0).unwrap();
    let s = LrSchedule::warmup(10, 0.1, cosine).unwrap();
    assert_lrs(
        &s,
        &[
            (0, 0.1),
            (5, 0.1 + 0.9 * 0.5),
            (9, 0.1 + 0.9 * 0.9),
            (10, 1.0),
            (20, 0.5),
            (30, 0.0),
        ],
    );
    // Warm-up from zero into a step decay.
    let s = LrSchedule::warmup(4, 0.0, LrSchedule::step(0.2, 5, 0.5).unwrap()).unwrap();
    assert_lrs(&s, &[(0, 0.0), (1, 0.05), (3, 0.15), (4, 0.2), (8, 0.2), (9, 0.1)]);
    assert!(LrSchedule::warmup(4, 1.5, LrSchedule::constant(0.1)).is_err());
}

#[test]
fn linear_schedule_with_warmup_as_transformers() {
    // get_linear_schedule_with_warmup(num_warmup_steps=6, num_training_steps=20) at lr 5e-5:
    // step / 6 during warm-up, then (20 - step) / 14, and 0 from step 20 on.
    let lr = 5e-5;
    let s = LrSchedule::warmup(6, 0.0, LrSchedule::linear(lr, 14).unwrap()).unwrap();
    assert_lrs(
        &s,
        &[(0, 0.0), (3, lr * 3.0 / 6.0), (6, lr), (13, lr * 7.0 / 14.0), (19, lr / 14.0), (20, 0.0), (25, 0.0)],
    );
    assert!(LrSchedule::linear(lr, 0).is_err());
}
