//! JSON values to SQLite values and back, and parameter binding.
//!
//! The mapping is the API's contract: `null`, integers, floats, strings,
//! booleans (stored as 0/1) and blobs as `{"base64": "..."}`. Anything else
//! (arrays, other objects) is refused rather than guessed at.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde_json::{Map, Number, Value};
use shoal_types::api::Params;
use shoal_types::{Error, Result};

/// Converts one JSON value into the SQLite value it stands for.
pub fn json_to_sql(value: &Value) -> Result<SqlValue> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                SqlValue::Integer(i)
            } else if let Some(f) = n.as_f64() {
                SqlValue::Real(f)
            } else {
                return Err(Error::InvalidInput(format!("number {n} is out of range")));
            }
        }
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(map) => match (map.len(), map.get("base64")) {
            (1, Some(Value::String(b64))) => {
                SqlValue::Blob(BASE64.decode(b64).map_err(|e| {
                    Error::InvalidInput(format!("invalid base64 in blob value: {e}"))
                })?)
            }
            _ => {
                return Err(Error::InvalidInput(
                    "unsupported value: an object must be {\"base64\": \"...\"} (a blob)".into(),
                ));
            }
        },
        Value::Array(_) => {
            return Err(Error::InvalidInput(
                "unsupported value: arrays cannot be stored; encode them as a JSON string".into(),
            ));
        }
    })
}

/// Converts one SQLite value into JSON.
pub fn sql_to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Number(i.into()),
        // SQLite can hold NaN and infinities; JSON cannot, so they read as null.
        ValueRef::Real(f) => Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            let mut m = Map::new();
            m.insert("base64".into(), Value::String(BASE64.encode(b)));
            Value::Object(m)
        }
    }
}

/// Binds `params` to `stmt`, checking that every parameter of the statement
/// gets exactly one value and no value is left over.
pub fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> Result<()> {
    let count = stmt.parameter_count();
    match params {
        Params::Positional(values) => {
            if values.len() != count {
                return Err(Error::InvalidInput(format!(
                    "the statement takes {count} parameter(s) but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, json_to_sql(v)?).map_err(crate::map_sqlite_error)?;
            }
        }
        Params::Named(map) => {
            let mut bound = vec![false; count];
            for (name, v) in map {
                let index = find_named(stmt, name)?;
                bound[index - 1] = true;
                stmt.raw_bind_parameter(index, json_to_sql(v)?).map_err(crate::map_sqlite_error)?;
            }
            if let Some(i) = bound.iter().position(|b| !b) {
                let name = stmt.parameter_name(i + 1).unwrap_or("?").to_string();
                return Err(Error::InvalidInput(format!("no value given for parameter {name}")));
            }
        }
    }
    Ok(())
}

/// Finds a named parameter, with or without its sigil (`:`, `@`, `$`).
fn find_named(stmt: &rusqlite::Statement<'_>, name: &str) -> Result<usize> {
    let candidates: Vec<String> = if name.starts_with([':', '@', '$']) {
        vec![name.to_string()]
    } else {
        vec![format!(":{name}"), format!("@{name}"), format!("${name}")]
    };
    for c in &candidates {
        if let Some(i) = stmt.parameter_index(c).map_err(crate::map_sqlite_error)? {
            return Ok(i);
        }
    }
    Err(Error::InvalidInput(format!("the statement has no parameter named {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip() {
        for v in
            [json!(null), json!(42), json!(-7), json!(1.5), json!("hi"), json!({"base64": "AAEC"})]
        {
            let sql = json_to_sql(&v).unwrap();
            assert_eq!(sql_to_json(ValueRef::from(&sql)), v);
        }
        assert_eq!(json_to_sql(&json!(true)).unwrap(), SqlValue::Integer(1));
    }

    #[test]
    fn unsupported_values_are_refused() {
        assert!(matches!(json_to_sql(&json!([1])), Err(Error::InvalidInput(_))));
        assert!(matches!(json_to_sql(&json!({"a": 1})), Err(Error::InvalidInput(_))));
        assert!(matches!(json_to_sql(&json!({"base64": "!!"})), Err(Error::InvalidInput(_))));
        assert!(matches!(json_to_sql(&json!(u64::MAX)), Ok(SqlValue::Real(_))));
    }
}
