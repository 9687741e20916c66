//! A worker's topic subscriptions: topic → the connections of this worker subscribed to it.
//! Publishing walks a dense list; unsubscribing is O(1) (swap-remove with an index).

use std::collections::HashMap;
use std::sync::Arc;

use crate::handler::ConnId;

#[derive(Default)]
struct Members {
    list: Vec<ConnId>,
    index: HashMap<ConnId, usize>,
}

#[derive(Default)]
pub(crate) struct Topics {
    map: HashMap<Arc<str>, Members>,
}

impl Topics {
    /// Adds `id` to `topic`; returns the shared topic name for the connection to keep.
    pub fn subscribe(&mut self, topic: &str, id: ConnId) -> Arc<str> {
        let key = match self.map.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let m = self.map.entry(key.clone()).or_default();
        if !m.index.contains_key(&id) {
            m.index.insert(id, m.list.len());
            m.list.push(id);
        }
        key
    }

    pub fn unsubscribe(&mut self, topic: &str, id: ConnId) {
        let Some(m) = self.map.get_mut(topic) else {
            return;
        };
        if let Some(i) = m.index.remove(&id) {
            m.list.swap_remove(i);
            if let Some(moved) = m.list.get(i) {
                m.index.insert(*moved, i);
            }
        }
        if m.list.is_empty() {
            self.map.remove(topic);
        }
    }

    /// The subscribers of `topic` on this worker.
    pub fn members(&self, topic: &str) -> &[ConnId] {
        self.map.get(topic).map_or(&[], |m| &m.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_keeps_index_consistent() {
        let mut t = Topics::default();
        let ids: Vec<_> = (0..5).map(|i| ConnId::new(0, i, 1)).collect();
        for id in &ids {
            t.subscribe("news", *id);
        }
        t.subscribe("news", ids[0]);
        assert_eq!(t.members("news").len(), 5);
        t.unsubscribe("news", ids[1]);
        t.unsubscribe("news", ids[4]);
        let mut left = t.members("news").to_vec();
        left.sort();
        assert_eq!(left, vec![ids[0], ids[2], ids[3]]);
        for id in [ids[0], ids[2], ids[3]] {
            t.unsubscribe("news", id);
        }
        assert!(t.map.is_empty());
    }
}
