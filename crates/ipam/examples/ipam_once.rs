//! One allocation (or release) per process, like a CNI ADD/DEL: for timing process costs.
//!
//! `ipam_once <dataDir> <node> add|del|show|blocks <containerID>`

use std::process::ExitCode;

use knit_ipam::{AllocRequest, Ipam, IpamConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: ipam_once <dataDir> <node> add|del <containerID>");
        return ExitCode::from(2);
    }
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"knit-routed","ipam":{{"type":"knit-ipam","node":"{}","dataDir":"{}",
        "pools":[{{"name":"overlay","cidr":"10.233.64.0/18","blockSize":26}}]}}}}"#,
        args[2], args[1]
    );
    let run = || -> Result<String, knit_ipam::Error> {
        let cfg = IpamConfig::from_netconf(conf.as_bytes())?;
        let ipam = Ipam::open(cfg)?;
        match args[3].as_str() {
            "add" => {
                let r = ipam.allocate(&AllocRequest::new(&args[4], "eth0"))?;
                Ok(r.to_cni_json(Some("1.0.0")).to_string())
            }
            "show" => Ok(knit_ipam::show(std::path::Path::new(&args[1]))?.to_string()),
            "blocks" => Ok(format!("{:?}", ipam.blocks_of(&args[2])?)),
            _ => Ok(format!("{:?}", ipam.release(&args[4], "eth0")?)),
        }
    };
    match run() {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{{\"code\":{},\"msg\":{:?}}}", e.cni_code(), e.to_string());
            ExitCode::FAILURE
        }
    }
}
