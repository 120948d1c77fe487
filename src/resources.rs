//! What a task or actor asks for, in the types the wire carries: named
//! resource amounts in fixed point (a task's shape, a node's total and
//! what it has free), where it may run ([`SchedulingStrategy`]) and
//! whether a lease request may move ([`Spill`]). Amounts are 1/10000 of a
//! unit so that shapes can be hashed and compared exactly, as Ray's
//! `FixedPoint`; a set decoded from the wire is checked as the constructor
//! checks it.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Where a task or an actor runs, as Ray's scheduling strategies.
///
/// ```
/// use rustray::SchedulingStrategy;
/// let s = SchedulingStrategy::NodeAffinity { node: "node3".into(), soft: true };
/// # let _ = s;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// Ray's default: on the node that holds most of the task's argument
    /// bytes when they are elsewhere (1 MiB or more), else on the caller's
    /// node, spilling to other nodes when it is full.
    #[default]
    Default,
    /// Spread over the nodes: leases are asked of each live node in turn.
    Spread,
    /// On the named node (see [`nodes`](crate::nodes)). With `soft`, on
    /// another node when that one is full or lost; without, the task
    /// fails if the node is lost or cannot fit it.
    NodeAffinity {
        /// The node's name.
        node: String,
        /// Fall back to other nodes.
        soft: bool,
    },
}

/// Whether a lease request may go to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Spill {
    /// Never (it was spilled here already, or it has a hard affinity).
    Never,
    /// At once, when it does not fit here now.
    Now,
    /// This node is preferred (the task's data is here, or a soft
    /// affinity): it queues here, and moves only if it is still waiting
    /// after a few report periods (the scheduler's `PREFER_HERE_PERIODS`)
    /// and another node has room.
    Later,
}

/// The CPU resource's name.
pub(crate) const CPU: &str = "CPU";
/// The GPU resource's name.
pub(crate) const GPU: &str = "GPU";

/// Fixed-point units per unit of a resource.
pub(crate) const SCALE: f64 = 10_000.0;
/// One unit (one GPU, one CPU) in fixed point.
pub(crate) const UNIT: i64 = 10_000;

/// A set of named resource amounts (a task's shape or a node's capacity).
///
/// The amounts are shared, copied on the first change: a task's shape is
/// cloned into its spec, its scheduling class and the class's key, once
/// per task submitted, and a clone must not cost allocations there.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResourceSet {
    // sorted by name, no zero amounts: equal shapes compare equal
    pub(crate) items: Arc<Vec<(String, i64)>>,
}

/// Nothing: one shared empty set (an actor call's shape, cloned per call).
impl Default for ResourceSet {
    fn default() -> ResourceSet {
        static NONE: OnceLock<ResourceSet> = OnceLock::new();
        NONE.get_or_init(|| ResourceSet {
            items: Arc::new(Vec::new()),
        })
        .clone()
    }
}

/// As the bare list of amounts (the wire's form).
impl Serialize for ResourceSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.as_slice().serialize(s)
    }
}

/// The largest amount one resource may hold, in fixed-point units (about
/// 1.15e14 of the resource: bytes of memory on the largest nodes fit), so
/// that sums within a node cannot overflow.
const MAX_FIXED: i64 = 1 << 60;
/// The longest resource name accepted from the wire.
const MAX_NAME: usize = 1024;

/// A set decoded from another process is checked (names sorted, unique,
/// bounded; amounts bounded): a corrupt or forged report cannot inflate or
/// overflow a node's resources, or break the binary searches. Amounts may
/// be zero (a node's free CPUs when all are leased) or negative (they dip
/// below zero while a blocked worker's lent CPUs are taken back).
impl<'de> Deserialize<'de> for ResourceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(SetVisitor)
    }
}

/// Reads a set as its items, a sequence of (name, amount). Every pushed
/// task's spec carries one: a task's is almost always 1 CPU, an actor
/// call's empty, and both decode to their shared copies without
/// allocating (the name is read in place).
struct SetVisitor;

impl<'de> serde::de::Visitor<'de> for SetVisitor {
    type Value = ResourceSet;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of (resource name, amount)")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ResourceSet, A::Error> {
        let Some(first) = seq.next_element::<(Name<'de>, i64)>()? else {
            return Ok(ResourceSet::default());
        };
        let second = seq.next_element::<(Name<'de>, i64)>()?;
        if second.is_none() && first.0 .0 == CPU && first.1 == UNIT {
            return Ok(one_cpu().clone());
        }
        // The hint is the sender's word: bounded before it sizes anything.
        let mut items = Vec::with_capacity(2 + seq.size_hint().unwrap_or(0).min(64));
        for (name, amount) in [Some(first), second].into_iter().flatten() {
            items.push((name.0.into_owned(), amount));
        }
        while let Some((name, amount)) = seq.next_element::<(Name<'de>, i64)>()? {
            items.push((name.0.into_owned(), amount));
        }
        ResourceSet::checked(items).map_err(serde::de::Error::custom)
    }
}

/// A resource name as read: borrowed from the input where the format
/// allows it (serde's own `Cow<str>` always copies).
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl ResourceSet {
    fn checked(items: Vec<(String, i64)>) -> Result<ResourceSet, String> {
        for (i, (name, amount)) in items.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(format!(
                    "a resource name of {} bytes (1 to {MAX_NAME} allowed)",
                    name.len()
                ));
            }
            if amount.unsigned_abs() > MAX_FIXED as u64 {
                return Err(format!("resource `{name}` has an invalid amount {amount}"));
            }
            if i > 0 && items[i - 1].0 >= *name {
                return Err(format!("resource `{name}` is out of order or repeated"));
            }
        }
        // (1 CPU and the empty set, the shapes of almost every task and
        // of every actor call, are taken as their shared copies before
        // this: see `SetVisitor`.)
        Ok(ResourceSet {
            items: Arc::new(items),
        })
    }
}

/// `{CPU: 1}`, a task's default shape: built once, shared by every task
/// that keeps it.
pub(crate) fn one_cpu() -> &'static ResourceSet {
    static ONE: OnceLock<ResourceSet> = OnceLock::new();
    ONE.get_or_init(|| ResourceSet {
        items: Arc::new(vec![(CPU.to_string(), UNIT)]),
    })
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.items.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{k}: {}", *v as f64 / SCALE)?;
        }
        write!(f, "}}")
    }
}

impl ResourceSet {
    pub(crate) fn new() -> ResourceSet {
        ResourceSet::default()
    }

    /// Nothing asked for.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sets `name` to `amount`; rejects negative or non-finite amounts.
    pub(crate) fn set(&mut self, name: &str, amount: f64) -> Result<(), Error> {
        if !amount.is_finite() || amount < 0.0 {
            return Err(Error::invalid(format!(
                "resource `{name}` must be a finite amount >= 0, got {amount}"
            )));
        }
        let fixed = ((amount * SCALE).round() as i64).min(MAX_FIXED);
        match self.items.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) if fixed == 0 => {
                Arc::make_mut(&mut self.items).remove(i);
            }
            Ok(i) if self.items[i].1 == fixed => {}
            Ok(i) => Arc::make_mut(&mut self.items)[i].1 = fixed,
            Err(_) if fixed == 0 => {}
            Err(i) => Arc::make_mut(&mut self.items).insert(i, (name.to_string(), fixed)),
        }
        Ok(())
    }

    /// Sets an amount a task or actor asks for: as [`ResourceSet::set`],
    /// and, as Ray, a unit-instance resource (a GPU is a device: it can be
    /// shared as a fraction of one, never split across two) is a whole
    /// number or a fraction below 1.
    pub(crate) fn set_request(&mut self, name: &str, amount: f64) -> Result<(), Error> {
        if name == GPU && amount > 1.0 && amount.fract() != 0.0 {
            return Err(Error::invalid(format!(
                "resource `{name}` must be a whole number or a fraction below 1, got {amount}"
            )));
        }
        self.set(name, amount)
    }

    pub(crate) fn with(mut self, name: &str, amount: f64) -> Result<ResourceSet, Error> {
        self.set(name, amount)?;
        Ok(self)
    }

    pub(crate) fn get(&self, name: &str) -> f64 {
        self.fixed(name) as f64 / SCALE
    }

    pub(crate) fn fixed(&self, name: &str) -> i64 {
        self.items
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .map(|i| self.items[i].1)
            .unwrap_or(0)
    }

    /// The amounts by name.
    pub(crate) fn to_vec(&self) -> Vec<(String, f64)> {
        self.items
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / SCALE))
            .collect()
    }

    /// True when every amount in `self` is available in `avail`.
    /// The first amount below zero, if any: valid in free amounts (all
    /// leased, CPUs lent back), never in a request or a node's total.
    pub(crate) fn negative(&self) -> Option<(&str, f64)> {
        self.items
            .iter()
            .find(|(_, v)| *v < 0)
            .map(|(k, v)| (k.as_str(), *v as f64 / SCALE))
    }

    pub(crate) fn fits(&self, avail: &ResourceSet) -> bool {
        self.items.iter().all(|(k, v)| avail.fixed(k) >= *v)
    }

    pub(crate) fn add_signed(&mut self, other: &ResourceSet, sign: i64) {
        if other.items.is_empty() {
            return;
        }
        let items = Arc::make_mut(&mut self.items);
        for (k, v) in other.items.iter() {
            match items.binary_search_by(|(n, _)| n.as_str().cmp(k)) {
                Ok(i) => items[i].1 += sign * v,
                Err(i) => items.insert(i, (k.clone(), sign * v)),
            }
        }
    }

    /// Only the CPU part of the shape (what a blocked task lends back).
    pub(crate) fn cpu_only(&self) -> ResourceSet {
        let cpu = self.fixed(CPU);
        if cpu == 0 {
            return ResourceSet::new();
        }
        if cpu == UNIT {
            return one_cpu().clone();
        }
        ResourceSet {
            items: Arc::new(vec![(CPU.to_string(), cpu)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// A clone shares the amounts (no allocation per task submitted); a
    /// change to one copy is its own.
    #[test]
    fn clones_share_their_amounts_until_one_changes() {
        let a = one_cpu().clone();
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.items, &b.items));
        b.set(CPU, 1.0).unwrap();
        assert!(Arc::ptr_eq(&a.items, &b.items), "setting the same amount");
        b.set(GPU, 1.0).unwrap();
        let mut c = a.clone();
        c.add_signed(&b, -1);
        assert_eq!(a, *one_cpu());
        assert_eq!((b.get(CPU), b.get(GPU)), (1.0, 1.0));
        assert_eq!((c.get(CPU), c.get(GPU)), (0.0, -1.0));
        assert_eq!(a.cpu_only(), a);
        assert!(Arc::ptr_eq(&b.cpu_only().items, &one_cpu().items));
        let (mut none, other) = (ResourceSet::new(), ResourceSet::default());
        assert!(Arc::ptr_eq(&none.items, &other.items), "one empty set");
        none.set(GPU, 0.5).unwrap();
        assert!(other.is_empty() && ResourceSet::new().is_empty());
    }

    /// The wire carries the bare sorted list; the default shape decoded
    /// from it is the shared one, and any other is checked as before.
    #[test]
    fn the_wire_form_is_the_list_and_the_default_decodes_shared() {
        let list: Vec<(String, i64)> = vec![(CPU.into(), UNIT)];
        let bytes = codec::encode(one_cpu()).unwrap();
        assert_eq!(bytes, codec::encode(&list).unwrap());
        let back: ResourceSet = codec::decode(&bytes, "a shape").unwrap();
        assert!(Arc::ptr_eq(&back.items, &one_cpu().items));
        // Read with nothing allocated: every pushed task's spec has one.
        let peak = crate::fuzz::peak_of(|| {
            let set: ResourceSet = codec::decode(&bytes, "a shape").unwrap();
            std::hint::black_box(set);
        });
        assert_eq!(peak, 0, "bytes allocated decoding 1 CPU");
        let none = codec::encode(&ResourceSet::new()).unwrap();
        let back: ResourceSet = codec::decode(&none, "a shape").unwrap();
        assert!(Arc::ptr_eq(&back.items, &ResourceSet::new().items));
        // One item that is not 1 CPU, and two and three items: read by
        // name and amount past the shared case.
        let three = ResourceSet::new()
            .with(CPU, 1.0)
            .and_then(|s| s.with(GPU, 0.5))
            .and_then(|s| s.with("disk", 3.0))
            .unwrap();
        for set in [
            ResourceSet::new().with(CPU, 2.0).unwrap(),
            ResourceSet::new().with(GPU, 1.0).unwrap(),
            ResourceSet::new()
                .with(CPU, 1.0)
                .and_then(|s| s.with(GPU, 1.0))
                .unwrap(),
            three,
        ] {
            let back: ResourceSet =
                codec::decode(&codec::encode(&set).unwrap(), "a shape").unwrap();
            assert_eq!(back, set);
        }
        let unsorted: Vec<(String, i64)> = vec![(GPU.into(), UNIT), (CPU.into(), UNIT)];
        let e = codec::decode::<ResourceSet>(&codec::encode(&unsorted).unwrap(), "a shape")
            .unwrap_err();
        assert!(e.message().contains("out of order"), "{e}");
        let empty_name: Vec<(String, i64)> = vec![(CPU.into(), UNIT), (String::new(), UNIT)];
        let e = codec::decode::<ResourceSet>(&codec::encode(&empty_name).unwrap(), "a shape")
            .unwrap_err();
        assert!(e.message().contains("resource name of 0 bytes"), "{e}");
    }
}
