//! A node's GPUs as devices with ids, and how much of each the leases
//! hold: Ray's resource instances for a unit-instance resource.
//!
//! A GPU is a device, not an amount: a lease of `num_gpus(k)` for a whole
//! `k` gets `k` distinct devices, all of each; a fraction below one gets a
//! share of a single device, which it may share with other fractional
//! holders (both see the same id). The ids are the node's own numbering
//! (what `CUDA_VISIBLE_DEVICES` says on that node), so a worker can be
//! told exactly which devices it holds.
//!
//! Choices, as Ray's `TaskResourceInstances`: whole devices are taken
//! lowest id first; a fraction goes to the device with the least left that
//! still fits it (packing shared devices, keeping whole ones free for whole
//! requests). The aggregate amount the lease manager keeps in its
//! [`ResourceSet`](super::ResourceSet) is always the sum of what is free
//! here; the two are changed together.

use super::UNIT;
use crate::error::{Error, Result};

/// The most devices a node may list: far beyond any real node, small
/// enough that an id list read from the environment stays cheap.
pub(crate) const MAX_DEVICES: usize = 1024;

/// The variable through which CUDA is told which devices a process sees.
pub(crate) const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

#[derive(Debug)]
struct Device {
    id: u32,
    /// What is free of it, in fixed point (`UNIT` is the whole device).
    free: i64,
}

/// What a lease holds of the node's devices: (device index, amount).
pub(crate) type Share = Vec<(usize, i64)>;

/// The GPUs of a node and what is free of each.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    gpus: Vec<Device>,
}

impl Devices {
    /// Devices with these ids, all free.
    pub(crate) fn new(ids: &[u32]) -> Devices {
        Devices {
            gpus: ids.iter().map(|&id| Device { id, free: UNIT }).collect(),
        }
    }

    /// How many devices the node has.
    pub(crate) fn count(&self) -> usize {
        self.gpus.len()
    }

    /// What a request for `amount` (fixed point) would get now, or `None`
    /// when the devices free cannot serve it (taken, or shared out). A
    /// request of more than one device that is not whole never fits (the
    /// submitting side rejects it first).
    pub(crate) fn pick(&self, amount: i64) -> Option<Share> {
        if amount <= 0 {
            return Some(Vec::new());
        }
        if amount < UNIT {
            return self
                .gpus
                .iter()
                .enumerate()
                .filter(|(_, d)| d.free >= amount)
                .min_by_key(|(i, d)| (d.free, *i))
                .map(|(i, _)| vec![(i, amount)]);
        }
        if amount % UNIT != 0 {
            return None;
        }
        let want = (amount / UNIT) as usize;
        let whole: Share = self
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, d)| d.free == UNIT)
            .take(want)
            .map(|(i, _)| (i, UNIT))
            .collect();
        (whole.len() == want).then_some(whole)
    }

    /// Takes a share [`Devices::pick`] returned.
    pub(crate) fn take(&mut self, share: &Share) {
        for &(i, amount) in share {
            if let Some(d) = self.gpus.get_mut(i) {
                d.free -= amount;
            }
        }
    }

    /// Gives a share back.
    pub(crate) fn give_back(&mut self, share: &Share) {
        for &(i, amount) in share {
            if let Some(d) = self.gpus.get_mut(i) {
                d.free = (d.free + amount).min(UNIT);
            }
        }
    }

    /// The device ids of a share, in the node's numbering.
    pub(crate) fn ids(&self, share: &Share) -> Vec<u32> {
        share
            .iter()
            .filter_map(|&(i, _)| self.gpus.get(i).map(|d| d.id))
            .collect()
    }

    /// What is free over all devices, in fixed point.
    #[cfg(test)]
    pub(crate) fn free_total(&self) -> i64 {
        self.gpus.iter().map(|d| d.free).sum()
    }
}

/// Device ids from a list such as `CUDA_VISIBLE_DEVICES` or Slurm's
/// `SLURM_STEP_GPUS` (`"0,2,3"`; empty means none). `name` is the variable,
/// for the error: the value came from the environment, so its size is
/// bounded and every entry checked (numbers, no repeats).
pub(crate) fn parse_device_list(name: &str, value: &str) -> Result<Vec<u32>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    for part in value.split(',') {
        if ids.len() == MAX_DEVICES {
            return Err(Error::invalid(format!(
                "{name} lists more than {MAX_DEVICES} devices"
            )));
        }
        let part = part.trim();
        let id: u32 = part.parse().map_err(|_| {
            Error::invalid(format!(
                "{name}={value}: `{part}` is not a device index (rustray numbers GPUs by index, not by UUID)"
            ))
        })?;
        if ids.contains(&id) {
            return Err(Error::invalid(format!(
                "{name}={value} lists device {id} twice"
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: i64 = UNIT / 2;

    #[test]
    fn whole_requests_take_distinct_free_devices() {
        let mut d = Devices::new(&(0..10).collect::<Vec<_>>());
        let mut seen = Vec::new();
        for k in [2, 4, 4] {
            let s = d.pick(k * UNIT).expect("fits");
            d.take(&s);
            seen.extend(d.ids(&s));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(d.pick(UNIT), None);
        assert_eq!(d.pick(1), None);
    }

    #[test]
    fn fractions_pack_onto_shared_devices() {
        let mut d = Devices::new(&[4, 5, 6]);
        let mut ids = Vec::new();
        for _ in 0..6 {
            let s = d.pick(HALF).expect("fits");
            d.take(&s);
            ids.extend(d.ids(&s));
        }
        assert_eq!(ids, vec![4, 4, 5, 5, 6, 6]);
        assert_eq!(d.free_total(), 0);
    }

    #[test]
    fn a_shared_device_is_not_a_whole_one() {
        let mut d = Devices::new(&[0, 1]);
        let quarter = d.pick(UNIT / 4).expect("fits");
        d.take(&quarter);
        // One whole device is left, not two.
        assert!(d.pick(2 * UNIT).is_none());
        let one = d.pick(UNIT).expect("the other device");
        assert_eq!(d.ids(&one), vec![1]);
        d.give_back(&quarter);
        assert_eq!(d.pick(2 * UNIT).map(|s| d.ids(&s)), Some(vec![0, 1]));
    }

    #[test]
    fn lists_from_the_environment_are_checked() {
        assert_eq!(parse_device_list("X", "0, 2,3").unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_device_list("X", "").unwrap(), Vec::<u32>::new());
        let e = parse_device_list("CUDA_VISIBLE_DEVICES", "GPU-1a2b").unwrap_err();
        assert!(e.message().contains("CUDA_VISIBLE_DEVICES"), "{e}");
        assert!(parse_device_list("X", "1,1").is_err());
        assert!(parse_device_list("X", "-1").is_err());
        let long: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let long = long.join(",");
        assert!(parse_device_list("X", &long).is_err());
    }
}
