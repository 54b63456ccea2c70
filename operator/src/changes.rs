//! Which watch events change what a controller reads.
//!
//! A controller that reconciles every object whenever a related kind changes (every IPPool
//! when a Node's addresses change, say) must not do so on every heartbeat of that kind:
//! Nodes and NodeNetworks change all the time in ways no pool cares about. [`Changes`]
//! remembers the part of each object that matters and says when an event changed it.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::runtime::watcher;

/// The part of each object that matters (`V`), by name, and whether an event changed it.
#[derive(Debug)]
pub struct Changes<V> {
    seen: BTreeMap<String, V>,
    /// Names seen since the current relist started (`Init`), to drop the others at `InitDone`.
    relisted: Option<BTreeSet<String>>,
}

impl<V> Default for Changes<V> {
    fn default() -> Self {
        Self {
            seen: BTreeMap::new(),
            relisted: None,
        }
    }
}

impl<V: PartialEq> Changes<V> {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`; true when it changed the part `extract` takes from an object, or
    /// removed an object, or ended a (re)list (objects may have changed while the watch was
    /// down). Objects of a list in progress are recorded silently: its end says it once.
    pub fn observe<K: kube::Resource>(
        &mut self,
        event: &watcher::Event<K>,
        extract: impl Fn(&K) -> V,
    ) -> bool {
        match event {
            watcher::Event::Apply(object) => self.record(object, extract(object)),
            watcher::Event::InitApply(object) => {
                let name = object.name_any();
                if let Some(relisted) = &mut self.relisted {
                    relisted.insert(name.clone());
                }
                self.seen.insert(name, extract(object));
                false
            }
            watcher::Event::Delete(object) => self.seen.remove(&object.name_any()).is_some(),
            watcher::Event::Init => {
                self.relisted = Some(BTreeSet::new());
                false
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisted.take() {
                    self.seen.retain(|name, _| relisted.contains(name));
                }
                true
            }
        }
    }

    fn record<K: kube::Resource>(&mut self, object: &K, value: V) -> bool {
        let name = object.name_any();
        if self.seen.get(&name) == Some(&value) {
            return false;
        }
        self.seen.insert(name, value);
        true
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some([("v".to_owned(), value.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn value(object: &ConfigMap) -> Option<String> {
        object.data.as_ref()?.get("v").cloned()
    }

    #[test]
    fn only_a_change_of_the_part_that_matters_counts() {
        let mut changes = Changes::new();
        assert!(changes.observe(&watcher::Event::Apply(object("a", "1")), value));
        assert!(!changes.observe(&watcher::Event::Apply(object("a", "1")), value));
        let mut relabelled = object("a", "1");
        relabelled.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        assert!(!changes.observe(&watcher::Event::Apply(relabelled), value));
        assert!(changes.observe(&watcher::Event::Apply(object("a", "2")), value));
    }

    #[test]
    fn deleting_a_known_object_counts_and_an_unknown_one_does_not() {
        let mut changes = Changes::new();
        changes.observe(&watcher::Event::Apply(object("a", "1")), value);
        assert!(changes.observe(&watcher::Event::Delete(object("a", "1")), value));
        assert!(!changes.observe(&watcher::Event::Delete(object("a", "1")), value));
    }

    #[test]
    fn a_relist_counts_once_at_its_end_and_forgets_objects_it_no_longer_lists() {
        let mut changes = Changes::new();
        changes.observe(&watcher::Event::Apply(object("gone", "1")), value);
        assert!(!changes.observe(&watcher::Event::<ConfigMap>::Init, value));
        assert!(!changes.observe(&watcher::Event::InitApply(object("a", "1")), value));
        assert!(changes.observe(&watcher::Event::<ConfigMap>::InitDone, value));
        // "gone" was not relisted, so a later delete of it is news to no one.
        assert!(!changes.observe(&watcher::Event::Delete(object("gone", "1")), value));
        assert!(!changes.observe(&watcher::Event::Apply(object("a", "1")), value));
    }
}
