//! Warnings about allow rules that a deny rule makes dead.

use crate::diag::Diagnostic;
use crate::model::PolicyDoc;

pub(crate) fn warnings(_docs: &[PolicyDoc]) -> Vec<Diagnostic> {
    Vec::new()
}
