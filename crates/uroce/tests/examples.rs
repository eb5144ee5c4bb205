//! The examples run as part of the tests (not only compile).

#[path = "../examples/hello_rdma.rs"]
mod hello_rdma;

#[test]
fn hello_rdma_example_runs() {
    hello_rdma::run("127.0.60.1".parse().unwrap(), "127.0.60.2".parse().unwrap()).unwrap();
}
