//! Deployment artefacts checked against the code and against real programs.
