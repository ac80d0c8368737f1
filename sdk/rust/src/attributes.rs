//! An event's attributes (`utm_source`, `section`, ...): keys are unique
//! within an event, so setting one replaces the value it had.

use crate::{Attribute, Event, Outcome, Rejection, Value};

impl Event {
    /// An event with these four fields and nothing else: what a tracker
    /// sends at least (for tests and tools; the host makes the real ones).
    pub fn new(event_id: impl Into<String>, user_id: impl Into<String>, timestamp_ms: i64, url: impl Into<String>) -> Event {
        Event {
            event_id: event_id.into(),
            user_id: user_id.into(),
            timestamp_ms,
            url: url.into(),
            ip: String::new(),
            user_agent: String::new(),
            referrer: None,
            session_id: None,
            country: None,
            city: None,
            browser: None,
            os: None,
            device: None,
            attributes: Vec::new(),
        }
    }

    /// The value of attribute `key`, if the event has it.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    /// Sets attribute `key`, replacing its value if the event has it (in
    /// place, so the order of the others holds).
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let (key, value) = (key.into(), value.into());
        match self.attributes.iter_mut().find(|a| a.key == key) {
            Some(existing) => existing.value = value,
            None => self.attributes.push(Attribute { key, value }),
        }
    }

    /// Removes attribute `key`; its value, if it had one.
    pub fn remove_attribute(&mut self, key: &str) -> Option<Value> {
        let at = self.attributes.iter().position(|a| a.key == key)?;
        Some(self.attributes.remove(at).value)
    }
}

impl Outcome {
    /// Refuses the event for `reason`, blaming `field`: dead-lettered.
    pub fn reject(field: &str, reason: impl Into<String>) -> Outcome {
        Outcome::Reject(Rejection { field: Some(field.into()), reason: reason.into() })
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Str(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Str(text.into())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Boolean(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::new("e", "u", 0, "/")
    }

    #[test]
    fn setting_an_attribute_twice_keeps_one_key_in_its_place() {
        let mut e = event();
        e.set_attribute("a", "x");
        e.set_attribute("b", 2i64);
        e.set_attribute("a", true);
        let keys: Vec<&str> = e.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(matches!(e.attribute("a"), Some(Value::Boolean(true))));
        assert!(matches!(e.remove_attribute("b"), Some(Value::Int(2))));
        assert!(e.attribute("b").is_none() && e.remove_attribute("b").is_none());
    }
}
