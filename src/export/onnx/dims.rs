//! Sizes a graph may know only when it runs (`export onnx --dynamic`): a [`Dim`] is either
//! fixed at export time or an int64 tensor of shape [1] computed in the graph from the
//! input's shape. Arithmetic on fixed dims stays plain arithmetic, so a fixed-size export
//! holds the same constants it always did; a symbolic operand adds the int64 node that
//! computes it. The counterpart of the `H, W = x.shape[2:]` arithmetic upstream's
//! `vit_comer.py` / `comer_modules.py` (`deform_inputs`, `_get_pos_embed`) do per forward.

use super::builder::{Graph, attr_i};

/// One size of a tensor: known at export, or the name of an int64 [1] tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// Known when the graph is built.
    Fixed(usize),
    /// Computed by the graph: the name of an int64 tensor of shape [1].
    Sym(String),
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Fixed(v)
    }
}

impl Dim {
    /// The value, when known at export.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(v) => Some(*v),
            Dim::Sym(_) => None,
        }
    }
}

impl Graph<'_> {
    /// `d` as an int64 tensor of shape [1].
    pub fn dim_tensor(&mut self, d: &Dim) -> String {
        match d {
            Dim::Fixed(v) => self.const_i64(&[*v as i64]),
            Dim::Sym(s) => s.clone(),
        }
    }

    /// `d` as an int64 scalar (rank 0).
    fn dim_scalar(&mut self, d: &Dim) -> String {
        match d {
            Dim::Fixed(v) => self.const_i64_shaped(&[], &[*v as i64]),
            Dim::Sym(s) => {
                let axes = self.const_i64(&[0]);
                self.op("Squeeze", &[s, &axes], vec![]) // [1] → []
            }
        }
    }

    /// `d` as a float32 scalar (rank 0), for normalising coordinates; built inside a
    /// float32 region ([`Graph::enter_f32`]) of a float16 graph.
    pub fn dim_f32(&mut self, d: &Dim) -> String {
        match d {
            Dim::Fixed(v) => self.scalar(*v as f32),
            Dim::Sym(_) => {
                let s = self.dim_scalar(d);
                self.op("Cast", &[&s], vec![attr_i("to", super::proto::data_type::FLOAT as i64)])
            }
        }
    }

    /// `0 .. n−1` as an int64 (n,) tensor.
    pub fn range(&mut self, n: &Dim) -> String {
        let limit = self.dim_scalar(n);
        let zero = self.const_i64_shaped(&[], &[0]);
        let one = self.const_i64_shaped(&[], &[1]);
        self.op("Range", &[&zero, &limit, &one], vec![])
    }

    fn dim_op(&mut self, op: &str, a: &Dim, b: &Dim, fixed: impl Fn(usize, usize) -> usize) -> Dim {
        match (a, b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => Dim::Fixed(fixed(*x, *y)),
            _ => {
                let (x, y) = (self.dim_tensor(a), self.dim_tensor(b));
                Dim::Sym(self.op(op, &[&x, &y], vec![]))
            }
        }
    }

    /// `a · b`.
    pub fn dim_mul(&mut self, a: &Dim, b: &Dim) -> Dim {
        self.dim_op("Mul", a, b, |x, y| x * y)
    }

    /// `a + b`.
    pub fn dim_add(&mut self, a: &Dim, b: &Dim) -> Dim {
        self.dim_op("Add", a, b, |x, y| x + y)
    }

    /// `a − b` (the callers' `a` is never below `b`).
    pub fn dim_sub(&mut self, a: &Dim, b: &Dim) -> Dim {
        self.dim_op("Sub", a, b, |x, y| x - y)
    }

    /// `⌊a / k⌋` (ONNX integer `Div` truncates; every operand here is non-negative).
    pub fn dim_div(&mut self, a: &Dim, k: usize) -> Dim {
        self.dim_op("Div", a, &Dim::Fixed(k), |x, y| x / y)
    }

    /// `⌈a / k⌉ · k`: `a` padded up to a multiple of `k` (a window grid).
    pub fn dim_round_up(&mut self, a: &Dim, k: usize) -> Dim {
        let up = self.dim_add(a, &Dim::Fixed(k - 1));
        let n = self.dim_div(&up, k);
        self.dim_mul(&n, &Dim::Fixed(k))
    }

    /// A 1-D int64 shape tensor holding `dims`: one constant when all are fixed, else a
    /// `Concat` of the pieces.
    pub fn shape_tensor(&mut self, dims: &[Dim]) -> String {
        if let Some(all) = dims.iter().map(Dim::fixed).collect::<Option<Vec<usize>>>() {
            let v: Vec<i64> = all.iter().map(|&d| d as i64).collect();
            return self.const_i64(&v);
        }
        let parts: Vec<String> = dims.iter().map(|d| self.dim_tensor(d)).collect();
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        self.op("Concat", &refs, vec![attr_i("axis", 0)])
    }

    /// `x.reshape(dims)`.
    pub fn reshape_to(&mut self, x: &str, dims: &[Dim]) -> String {
        let s = self.shape_tensor(dims);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `x[start:end]` along `axis`.
    pub fn slice_to(&mut self, x: &str, axis: i64, start: &Dim, end: &Dim) -> String {
        let s = self.dim_tensor(start);
        let e = self.dim_tensor(end);
        let a = self.const_i64(&[axis]);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }

    /// The int64 [1] tensor `shape(x)[axis]`.
    pub fn shape_at(&mut self, x: &str, axis: usize) -> Dim {
        let s = self.op("Shape", &[x], vec![]);
        let i = self.const_i64(&[axis as i64]);
        Dim::Sym(self.op("Gather", &[&s, &i], vec![attr_i("axis", 0)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::onnx::builder::Weights;

    #[test]
    fn fixed_arithmetic_adds_no_node() {
        let w = Weights::new(vec![]);
        let mut g = Graph::new(&w);
        let h = Dim::Fixed(13);
        let p = g.dim_round_up(&h, 4);
        assert_eq!(p, Dim::Fixed(16));
        let n = g.dim_mul(&p, &Dim::Fixed(2));
        assert_eq!(g.dim_sub(&n, &h), Dim::Fixed(19));
        assert!(g.nodes.is_empty());
    }

    #[test]
    fn symbolic_operands_add_int64_nodes() {
        let w = Weights::new(vec![]);
        let mut g = Graph::new(&w);
        let h = g.shape_at("image", 2);
        let p = g.dim_round_up(&h, 14);
        assert!(p.fixed().is_none());
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Shape", "Gather", "Add", "Div", "Mul"]);
        let s = g.shape_tensor(&[Dim::Fixed(1), p, Dim::Fixed(3)]);
        assert_eq!(g.nodes.last().map(|n| (n.op_type.as_str(), n.output[0].as_str())), Some(("Concat", s.as_str())));
    }
}
