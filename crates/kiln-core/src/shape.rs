use std::fmt;

/// Kernels carry shapes and strides in fixed-size uniform arrays; this is their length.
pub const MAX_RANK: usize = 8;

/// Dimensions of a tensor, outermost first (row-major / C order).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Strides that read this shape as if it were broadcast to `target`
    /// (right-aligned, NumPy rules): broadcast axes get stride 0.
    /// The caller must have checked that the broadcast is valid.
    pub fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = target.rank() - self.rank();
        (0..target.rank())
            .map(|i| {
                if i < offset {
                    0
                } else {
                    let j = i - offset;
                    if self.0[j] == 1 && target.0[i] != 1 {
                        0
                    } else {
                        own[j]
                    }
                }
            })
            .collect()
    }

    /// NumPy broadcasting of two shapes; `None` when they are incompatible.
    pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = vec![0; rank];
        for (i, slot) in out.iter_mut().enumerate() {
            let da = if i + a.rank() >= rank { a.0[i + a.rank() - rank] } else { 1 };
            let db = if i + b.rank() >= rank { b.0[i + b.rank() - rank] } else { 1 };
            *slot = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return None;
            };
        }
        Some(Shape(out))
    }

    /// Whether this shape can be broadcast to `target` without changing `target`.
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        Shape::broadcast(self, target).as_ref() == Some(target)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        let a = Shape::from([8, 1, 6, 1]);
        let b = Shape::from([7, 1, 5]);
        assert_eq!(Shape::broadcast(&a, &b), Some(Shape::from([8, 7, 6, 5])));
        assert_eq!(Shape::broadcast(&Shape::from([2, 3]), &Shape::from([4, 3])), None);
        assert_eq!(Shape::from([3, 1]).broadcast_strides(&Shape::from([2, 3, 4])), vec![0, 1, 0]);
        assert_eq!(Shape::from([2, 3, 4]).strides(), vec![12, 4, 1]);
    }
}
