//! The loaded plan: storage slots, feeds, step dispatch, state updates and outputs.
use kiln_core::{DType, ExecError, Executor, FusedProgram, HostData, HostTensor, Op, Operand, Plan, Step, Tensor};

use crate::shared::{lock, SharedHandle, StateRegistry};
use crate::storage::{Slot, View, ViewMut};
use crate::strided::TensorRef;
use crate::{conv, elementwise, fused, index, int8, matmul, movement, random, reduce, softmax, Element, Float};

pub struct CpuExecutor<T: Float> {
    plan: Plan,
    /// The backend-wide value of each of `plan.states` (same order). A run moves each
    /// value into its slot and back (no copy): plans loaded on one backend share their
    /// states by name, and see each other's updates.
    shared: Vec<SharedHandle<T>>,
    /// The backend's lock for runs and state access (`StateRegistry::turn`).
    turn: std::sync::Arc<std::sync::Mutex<()>>,
    /// One slot per plan buffer.
    slots: Vec<Slot<T>>,
    /// Elements of the largest tenant of each buffer: what a slot is allocated for.
    capacity: Vec<usize>,
    /// Time spent in each plan step since recording started (`record_step_times`).
    step_times: Option<Vec<std::time::Duration>>,
}

impl<T: Float> CpuExecutor<T> {
    /// Check the plan's buffer references, allocate the slots and write the states'
    /// initial values.
    pub fn load(plan: &Plan, registry: &StateRegistry<T>) -> Result<Self, ExecError> {
        let capacity = buffer_capacities(plan)?;
        for step in &plan.steps {
            let outputs: Vec<&Operand> = step.outputs().collect();
            for (k, output) in outputs.iter().enumerate() {
                let problem = if step.inputs.iter().any(|i| i.buffer == output.buffer) {
                    "while reading it"
                } else if outputs[..k].iter().any(|o| o.buffer == output.buffer) {
                    "twice"
                } else {
                    continue;
                };
                return Err(ExecError::Unsupported(format!(
                    "plan step #{} ({}) writes buffer {} {problem}",
                    step.node.id(),
                    step.op.name(),
                    output.buffer
                )));
            }
        }
        // Slots take their kind from their first write; until then they hold float zeros.
        let slots = capacity.iter().map(|&n| Slot::new(DType::F32, n)).collect();
        let mut shared = Vec::with_capacity(plan.states.len());
        for state in &plan.states {
            let handle = registry.attach(&state.name, &state.operand, || {
                let mut value = check_state_value(&state.name, &state.operand, &state.init)?;
                if state.operand.dtype == DType::F16 {
                    if let Slot::Float(v) = &mut value {
                        round_to_f16(v);
                    }
                }
                Ok(value)
            })?;
            shared.push(handle);
        }
        Ok(CpuExecutor { plan: plan.clone(), shared, turn: registry.turn(), slots, capacity, step_times: None })
    }

    /// Write `value` (already checked against `operand`) into its buffer, rounding f16
    /// tensors to f16 precision.
    fn store(&mut self, operand: &Operand, mut value: Slot<T>) {
        if operand.dtype == DType::F16 {
            if let Slot::Float(v) = &mut value {
                round_to_f16(v);
            }
        }
        let slot = &mut self.slots[operand.buffer];
        slot.prepare_for(operand.dtype, self.capacity[operand.buffer]);
        match (slot, value) {
            (Slot::Float(dst), Slot::Float(src)) => dst[..src.len()].copy_from_slice(&src),
            (Slot::U32(dst), Slot::U32(src)) => dst[..src.len()].copy_from_slice(&src),
            _ => unreachable!("values are checked against the operand's dtype before they are stored"),
        }
    }

    /// The current value of `operand` as host data (F32 or F64 as `T`; U32 for u32).
    fn fetch(&self, operand: &Operand) -> Result<HostTensor, ExecError> {
        let shape = operand.shape.clone();
        Ok(match self.slots[operand.buffer].view(operand)? {
            View::Float(v) => T::to_host(shape, v.to_vec()),
            View::U32(v) => HostTensor { shape, data: HostData::U32(v.to_vec()) },
        })
    }

    /// Check every feed (the rules of `Plan::match_feeds`) and convert it; nothing is
    /// written unless every feed is good. Returns (input index, value) pairs.
    fn check_feeds(&self, feeds: &[(Tensor, HostTensor)]) -> Result<Vec<(usize, Slot<T>)>, ExecError> {
        let matched = self.plan.match_feeds(feeds)?;
        Ok(matched.into_iter().map(|(at, host)| (at, to_slot::<T>(host))).collect())
    }

    fn state_index(&self, state: Tensor) -> Result<(usize, Operand), ExecError> {
        let i = self.plan.state_index(state)?;
        Ok((i, self.plan.states[i].operand.clone()))
    }

    /// Moves every state's value into its slot for a run. A state whose buffer is
    /// larger than the state (the plan gave it other tenants too) is copied instead.
    fn take_states(&mut self) {
        for (state, handle) in self.plan.states.iter().zip(&self.shared) {
            let operand = &state.operand;
            let mut shared = lock(handle);
            if self.capacity[operand.buffer] == shared.value.len() {
                self.slots[operand.buffer] = std::mem::replace(&mut shared.value, Slot::U32(Vec::new()));
            } else {
                let value = shared.value.clone();
                drop(shared);
                let slot = &mut self.slots[operand.buffer];
                slot.prepare_for(operand.dtype, self.capacity[operand.buffer]);
                copy_into(slot, &value);
            }
        }
    }

    /// Moves (or copies, as `take_states` took them) every state's value back, updated
    /// or not: after a run, and after a run that failed half way.
    fn return_states(&mut self) {
        for (state, handle) in self.plan.states.iter().zip(&self.shared) {
            let operand = &state.operand;
            let mut shared = lock(handle);
            if shared.value.len() == 0 && self.capacity[operand.buffer] == operand.numel() && self.slots[operand.buffer].len() == operand.numel() {
                shared.value = std::mem::replace(&mut self.slots[operand.buffer], Slot::U32(Vec::new()));
            } else if let Ok(view) = self.slots[operand.buffer].view(operand) {
                let value = match view {
                    View::Float(v) => Slot::Float(v.to_vec()),
                    View::U32(v) => Slot::U32(v.to_vec()),
                };
                shared.value = value;
            }
        }
    }

    /// After the steps: copy each update's source into its state, in list order.
    fn apply_updates(&mut self) -> Result<(), ExecError> {
        for update in &self.plan.updates {
            let (source, target) = (&update.source, &update.target);
            if source.buffer == target.buffer {
                continue; // the state was updated with its own value
            }
            let mut target_slot = std::mem::replace(&mut self.slots[target.buffer], Slot::U32(Vec::new()));
            target_slot.prepare_for(target.dtype, self.capacity[target.buffer]);
            let copied = self.slots[source.buffer].view(source).and_then(|src| {
                match (src, target_slot.view_mut(target)) {
                    (View::Float(s), ViewMut::Float(d)) => d.copy_from_slice(s),
                    (View::U32(s), ViewMut::U32(d)) => d.copy_from_slice(s),
                    (s, d) => {
                        return Err(ExecError::Unsupported(format!(
                            "update of state #{}: {} source into a {} state",
                            update.state.id(),
                            s.kind(),
                            d.kind()
                        )))
                    }
                }
                Ok(())
            });
            self.slots[target.buffer] = target_slot;
            copied?;
        }
        Ok(())
    }
}

impl<T: Float> CpuExecutor<T> {
    /// The steps and the updates, with the states in their slots.
    fn run_steps(&mut self) -> Result<(), ExecError> {
        match &mut self.step_times {
            None => {
                for step in &self.plan.steps {
                    execute_step(step, &mut self.slots, &self.capacity)?;
                }
            }
            Some(times) => {
                for (step, time) in self.plan.steps.iter().zip(times.iter_mut()) {
                    let start = std::time::Instant::now();
                    execute_step(step, &mut self.slots, &self.capacity)?;
                    *time += start.elapsed();
                }
            }
        }
        self.apply_updates()
    }
}

impl<T: Float> Executor for CpuExecutor<T> {
    fn run(&mut self, feeds: &[(Tensor, HostTensor)]) -> Result<Vec<HostTensor>, ExecError> {
        let values = self.check_feeds(feeds)?;
        let turn = self.turn.clone();
        let _turn = lock(&turn);
        for (at, value) in values {
            let operand = self.plan.inputs[at].operand.clone();
            self.store(&operand, value);
        }
        self.take_states();
        let ran = self.run_steps();
        // Outputs are read before the states go back: an output may be a state.
        let outputs = ran.and_then(|()| self.plan.outputs.iter().map(|o| self.fetch(&o.operand)).collect());
        self.return_states();
        outputs
    }

    fn record_step_times(&mut self, on: bool) -> bool {
        self.step_times = on.then(|| vec![std::time::Duration::ZERO; self.plan.steps.len()]);
        true
    }

    fn take_step_times(&mut self) -> Vec<std::time::Duration> {
        match &mut self.step_times {
            Some(times) => times.iter_mut().map(std::mem::take).collect(),
            None => Vec::new(),
        }
    }

    fn read_state(&mut self, state: Tensor) -> Result<HostTensor, ExecError> {
        let (index, operand) = self.state_index(state)?;
        let turn = self.turn.clone();
        let _turn = lock(&turn);
        let shared = lock(&self.shared[index]);
        let shape = operand.shape.clone();
        Ok(match shared.value.view(&operand)? {
            View::Float(v) => T::to_host(shape, v.to_vec()),
            View::U32(v) => HostTensor { shape, data: HostData::U32(v.to_vec()) },
        })
    }

    fn write_state(&mut self, state: Tensor, value: &HostTensor) -> Result<(), ExecError> {
        let (index, operand) = self.state_index(state)?;
        let name = self.plan.states[index].name.clone();
        let mut value = check_state_value(&name, &operand, value)?;
        if operand.dtype == DType::F16 {
            if let Slot::Float(v) = &mut value {
                round_to_f16(v);
            }
        }
        let turn = self.turn.clone();
        let _turn = lock(&turn);
        let mut shared = lock(&self.shared[index]);
        shared.value = value;
        Ok(())
    }
}

/// Elements each buffer must hold: the largest tenant among all operands of the plan.
fn buffer_capacities(plan: &Plan) -> Result<Vec<usize>, ExecError> {
    Ok(plan.largest_tenants(0, |o| o.numel() as u64)?.into_iter().map(|n| n as usize).collect())
}

/// `value`'s elements into the start of `slot` (of the same kind, at least as long).
fn copy_into<T: Float>(slot: &mut Slot<T>, value: &Slot<T>) {
    match (slot, value) {
        (Slot::Float(dst), Slot::Float(src)) => dst[..src.len()].copy_from_slice(src),
        (Slot::U32(dst), Slot::U32(src)) => dst[..src.len()].copy_from_slice(src),
        _ => unreachable!("a state's slot is prepared for the state's dtype"),
    }
}

/// Host data (already checked with `HostTensor::check_fits`) as a slot value.
fn to_slot<T: Float>(host: &HostTensor) -> Slot<T> {
    match &host.data {
        HostData::U32(v) => Slot::U32(v.clone()),
        float => Slot::Float(T::from_host(float).expect("float host data was checked by check_fits")),
    }
}

fn check_state_value<T: Float>(name: &str, operand: &Operand, host: &HostTensor) -> Result<Slot<T>, ExecError> {
    host.check_fits(operand).map_err(|message| ExecError::BadState { name: name.to_string(), message })?;
    Ok(to_slot::<T>(host))
}

fn round_to_f16<T: Float>(values: &mut [T]) {
    for v in values {
        *v = v.round_to_f16();
    }
}

/// Run one step: take its output slots out (a step never reads a buffer it writes, nor
/// writes one twice: checked at load), compute into them, round f16 outputs, and put
/// them back.
fn execute_step<T: Float>(step: &Step, slots: &mut [Slot<T>], capacity: &[usize]) -> Result<(), ExecError> {
    let outputs: Vec<&Operand> = step.outputs().collect();
    let mut out_slots: Vec<Slot<T>> = outputs
        .iter()
        .map(|output| {
            let mut slot = std::mem::replace(&mut slots[output.buffer], Slot::U32(Vec::new()));
            slot.prepare_for(output.dtype, capacity[output.buffer]);
            slot
        })
        .collect();
    let inputs: Result<Vec<View<T>>, ExecError> = step.inputs.iter().map(|o| slots[o.buffer].view(o)).collect();
    let result = inputs.and_then(|inputs| {
        let mut outs: Vec<ViewMut<T>> = out_slots.iter_mut().zip(&outputs).map(|(slot, o)| slot.view_mut(o)).collect();
        match (&step.op, outs.len()) {
            (Op::Fused(program), _) => run_fused(step, program, &inputs, outs),
            (Op::FusedReduce { program, op, axes, shape }, 1) => {
                let kinds_error = || {
                    let ins: Vec<&str> = inputs.iter().map(|v| v.kind()).collect();
                    ExecError::Unsupported(format!(
                        "step #{} (fused_reduce): no CPU kernel for inputs {ins:?}: every input and the output must be float",
                        step.node.id()
                    ))
                };
                let xs = all_float(&inputs, &step.inputs).ok_or_else(kinds_error)?;
                let ViewMut::Float(out) = outs.remove(0) else { return Err(kinds_error()) };
                fused::run_reduce(step, program, *op, axes, &xs, shape, out)
            }
            (_, 1) => dispatch(step, &inputs, outs.remove(0)),
            (op, n) => Err(ExecError::Unsupported(format!(
                "step #{} ({}) has {n} outputs; only a fused step writes more than one",
                step.node.id(),
                op.name()
            ))),
        }
    });
    for (slot, output) in out_slots.iter_mut().zip(&outputs) {
        if output.dtype == DType::F16 {
            if let ViewMut::Float(out) = slot.view_mut(output) {
                round_to_f16(out);
            }
        }
    }
    for (slot, output) in out_slots.into_iter().zip(&outputs) {
        slots[output.buffer] = slot;
    }
    result
}

/// A fused step: float inputs, float outputs (its own and its extra outputs).
fn run_fused<T: Float>(step: &Step, program: &FusedProgram, inputs: &[View<T>], outs: Vec<ViewMut<T>>) -> Result<(), ExecError> {
    let kinds_error = || {
        let ins: Vec<&str> = inputs.iter().map(|v| v.kind()).collect();
        ExecError::Unsupported(format!("step #{} (fused): no CPU kernel for inputs {ins:?}: every input and output must be float", step.node.id()))
    };
    let xs = all_float(inputs, &step.inputs).ok_or_else(kinds_error)?;
    let outs: Vec<&mut [T]> = outs
        .into_iter()
        .map(|out| match out {
            ViewMut::Float(o) => Some(o),
            ViewMut::U32(_) => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(kinds_error)?;
    fused::run(step, program, &xs, outs, &step.output.shape)
}

fn arg<'a, E>(data: &'a [E], operand: &'a Operand) -> TensorRef<'a, E> {
    TensorRef { data, shape: &operand.shape }
}

/// Every input as a float tensor, or `None` if one is u32.
fn all_float<'a, T>(inputs: &[View<'a, T>], operands: &'a [Operand]) -> Option<Vec<TensorRef<'a, T>>> {
    let as_float = |(view, operand): (&View<'a, T>, &'a Operand)| match *view {
        View::Float(data) => Some(arg(data, operand)),
        View::U32(_) => None,
    };
    inputs.iter().zip(operands).map(as_float).collect()
}

/// Every input as a u32 tensor, or `None` if one is float.
fn all_u32<'a, T>(inputs: &[View<'a, T>], operands: &'a [Operand]) -> Option<Vec<TensorRef<'a, u32>>> {
    let as_u32 = |(view, operand): (&View<'a, T>, &'a Operand)| match *view {
        View::U32(data) => Some(arg(data, operand)),
        View::Float(_) => None,
    };
    inputs.iter().zip(operands).map(as_u32).collect()
}

/// Run `$body` with `$x` and `$o` bound to the data of one input and of the output, when
/// both are float or both are u32; otherwise return `$error`.
macro_rules! same_kind {
    ($x:expr, $out:expr, |$xv:ident, $ov:ident| $body:expr, $error:expr) => {
        match ($x, $out) {
            (View::Float($xv), ViewMut::Float($ov)) => $body,
            (View::U32($xv), ViewMut::U32($ov)) => $body,
            _ => return Err($error),
        }
    };
}

/// Pick the kernel for a step from its op and the kinds of its operands.
fn dispatch<T: Float>(step: &Step, inputs: &[View<T>], out: ViewMut<T>) -> Result<(), ExecError> {
    let ops = &step.inputs;
    let out_shape = &step.output.shape;
    let out_kind = out.kind();
    let mismatch = || {
        let kinds: Vec<&str> = inputs.iter().map(|v| v.kind()).collect();
        ExecError::Unsupported(format!(
            "step #{} ({}): no CPU kernel for inputs {kinds:?} -> {out_kind} output",
            step.node.id(),
            step.op.name()
        ))
    };
    match (&step.op, inputs, out) {
        (Op::Constant { value }, [], ViewMut::Float(o)) => o.fill(T::from_f64(*value)),
        (Op::Constant { value }, [], ViewMut::U32(o)) => o.fill(u32::from_f64(*value)),
        (Op::Unary(op), [View::Float(x)], ViewMut::Float(o)) => elementwise::unary(*op, x, o),
        (Op::Binary(op), [View::Float(a), View::Float(b)], ViewMut::Float(o)) => {
            elementwise::binary(*op, arg(a, &ops[0]), arg(b, &ops[1]), o, out_shape)
        }
        (Op::Compare(op), [a, b], out) => match (*a, *b, out) {
            (View::Float(a), View::Float(b), ViewMut::Float(o)) => {
                elementwise::compare(*op, arg(a, &ops[0]), arg(b, &ops[1]), o, out_shape)
            }
            (View::U32(a), View::U32(b), ViewMut::U32(o)) => {
                elementwise::compare(*op, arg(a, &ops[0]), arg(b, &ops[1]), o, out_shape)
            }
            _ => return Err(mismatch()),
        },
        // The condition may be float or u32, the values float or u32: four kernels.
        (Op::Where, [cond, a, b], out) => match (*cond, *a, *b, out) {
            (View::Float(c), View::Float(a), View::Float(b), ViewMut::Float(o)) => elementwise::select(arg(c, &ops[0]), arg(a, &ops[1]), arg(b, &ops[2]), o, out_shape),
            (View::U32(c), View::Float(a), View::Float(b), ViewMut::Float(o)) => elementwise::select(arg(c, &ops[0]), arg(a, &ops[1]), arg(b, &ops[2]), o, out_shape),
            (View::Float(c), View::U32(a), View::U32(b), ViewMut::U32(o)) => elementwise::select(arg(c, &ops[0]), arg(a, &ops[1]), arg(b, &ops[2]), o, out_shape),
            (View::U32(c), View::U32(a), View::U32(b), ViewMut::U32(o)) => elementwise::select(arg(c, &ops[0]), arg(a, &ops[1]), arg(b, &ops[2]), o, out_shape),
            _ => return Err(mismatch()),
        },
        (Op::Reduce { op, axes }, [View::Float(x)], ViewMut::Float(o)) => reduce::reduce(*op, axes, arg(x, &ops[0]), o),
        (Op::MatMul { trans_a, trans_b }, [View::Float(a), View::Float(b)], ViewMut::Float(o)) => {
            matmul::matmul(arg(a, &ops[0]), *trans_a, arg(b, &ops[1]), *trans_b, o, out_shape)
        }
        (Op::Softmax { axis }, [View::Float(x)], ViewMut::Float(o)) => softmax::softmax(arg(x, &ops[0]), *axis, o),
        (Op::LogSoftmax { axis }, [View::Float(x)], ViewMut::Float(o)) => {
            softmax::log_softmax(arg(x, &ops[0]), *axis, o)
        }
        (Op::Permute { perm }, [x], out) => {
            same_kind!(*x, out, |x, o| movement::permute(arg(x, &ops[0]), perm, o, out_shape), mismatch())
        }
        (Op::Expand, [x], out) => {
            same_kind!(*x, out, |x, o| movement::expand(arg(x, &ops[0]), o, out_shape), mismatch())
        }
        (Op::Slice { starts, steps }, [x], out) => {
            same_kind!(*x, out, |x, o| movement::slice(arg(x, &ops[0]), starts, steps, o, out_shape), mismatch())
        }
        (Op::SliceScatter { starts, steps, fill }, [x], out) => same_kind!(
            *x,
            out,
            |x, o| movement::slice_scatter(arg(x, &ops[0]), starts, steps, Element::from_f64(*fill), o, out_shape),
            mismatch()
        ),
        (Op::Concat { axis }, xs, ViewMut::Float(o)) => {
            let xs = all_float(xs, ops).ok_or_else(mismatch)?;
            movement::concat(&xs, *axis, o, out_shape)
        }
        (Op::Concat { axis }, xs, ViewMut::U32(o)) => {
            let xs = all_u32(xs, ops).ok_or_else(mismatch)?;
            movement::concat(&xs, *axis, o, out_shape)
        }
        (Op::Gather, [View::Float(table), View::U32(indices)], ViewMut::Float(o)) => {
            index::gather(arg(table, &ops[0]), indices, o)
        }
        (Op::ScatterAdd { rows }, [View::U32(indices), View::Float(src)], ViewMut::Float(o)) => {
            index::scatter_add(indices, src, *rows, o)
        }
        (Op::OneHot { classes }, [View::U32(indices)], ViewMut::Float(o)) => index::one_hot(indices, *classes, o),
        (Op::OneHot { classes }, [View::U32(indices)], ViewMut::U32(o)) => index::one_hot(indices, *classes, o),
        (Op::ArgMax { axis }, [View::Float(x)], ViewMut::U32(o)) => index::argmax(arg(x, &ops[0]), *axis, o),
        (Op::QuantizeI8, [View::Float(x), View::Float(inv_scale)], ViewMut::U32(o)) => {
            let k = ops[0].shape.dims().last().copied().unwrap_or(0);
            int8::quantize(x, inv_scale.first().copied().unwrap_or(T::ZERO), k, o)
        }
        (Op::MatMulI8, [View::U32(a), View::U32(b)], ViewMut::Float(o)) => int8::matmul(a, b, ops[0].shape.dims().get(1).copied().unwrap_or(0), o),
        (Op::SoftmaxCrossEntropy, [View::Float(logits), View::U32(labels)], ViewMut::Float(o)) => {
            softmax::softmax_cross_entropy(arg(logits, &ops[0]), labels, o)
        }
        (Op::SoftmaxCrossEntropyBackward, [View::Float(logits), View::U32(labels), View::Float(grad)], ViewMut::Float(o)) => {
            softmax::softmax_cross_entropy_backward(arg(logits, &ops[0]), labels, grad, o)
        }
        // Float -> float (f32 <-> f16) copies; the f16 rounding happens as the output is written.
        (Op::Cast, [View::Float(x)], ViewMut::Float(o)) => o.copy_from_slice(x),
        (Op::Cast, [View::Float(x)], ViewMut::U32(o)) => elementwise::float_to_u32(x, o),
        (Op::Cast, [View::U32(x)], ViewMut::Float(o)) => elementwise::u32_to_float(x, o),
        (Op::Cast, [View::U32(x)], ViewMut::U32(o)) => o.copy_from_slice(x),
        (Op::RandomUniform { seed }, [View::U32(counter)], ViewMut::Float(o)) => random::uniform(*seed, counter, o)?,
        (Op::Conv2d { params }, [View::Float(x), View::Float(w)], ViewMut::Float(o)) => {
            let geo = conv::conv_geometry(step, &ops[0].shape, &ops[1].shape, out_shape, *params)?;
            conv::conv2d(&geo, x, w, o)
        }
        (Op::Conv2dBackwardInput { params }, [View::Float(g), View::Float(w)], ViewMut::Float(o)) => {
            let geo = conv::conv_geometry(step, out_shape, &ops[1].shape, &ops[0].shape, *params)?;
            conv::conv2d_backward_input(&geo, g, w, o)
        }
        (Op::Conv2dBackwardWeight { params }, [View::Float(x), View::Float(g)], ViewMut::Float(o)) => {
            let geo = conv::conv_geometry(step, &ops[0].shape, out_shape, &ops[1].shape, *params)?;
            conv::conv2d_backward_weight(&geo, x, g, o)
        }
        (Op::MaxPool2d { kernel, stride, padding }, [View::Float(x)], ViewMut::Float(o)) => {
            let geo = conv::pool_geometry(step, &ops[0].shape, out_shape, *kernel, *stride, *padding)?;
            conv::max_pool2d(&geo, x, o)
        }
        (Op::MaxPool2dBackward { kernel, stride, padding }, [View::Float(x), View::Float(g)], ViewMut::Float(o)) => {
            let geo = conv::pool_geometry(step, &ops[0].shape, &ops[1].shape, *kernel, *stride, *padding)?;
            conv::require_same_shape(step, &ops[0].shape, out_shape)?;
            conv::max_pool2d_backward(&geo, x, g, o)
        }
        (Op::AvgPool2d { kernel, stride, padding }, [View::Float(x)], ViewMut::Float(o)) => {
            let geo = conv::pool_geometry(step, &ops[0].shape, out_shape, *kernel, *stride, *padding)?;
            conv::avg_pool2d(&geo, x, o)
        }
        (Op::AvgPool2dBackward { kernel, stride, padding }, [View::Float(g)], ViewMut::Float(o)) => {
            let geo = conv::pool_geometry(step, out_shape, &ops[0].shape, *kernel, *stride, *padding)?;
            conv::avg_pool2d_backward(&geo, g, o)
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}
