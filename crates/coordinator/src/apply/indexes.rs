//! Interface indexes by name, looked up once per call: plans name devices, the kernel wants
//! indexes, and several routes name one device.

use knit_cni::CniError;
use knit_host::route::Route;
use knit_host::{link, Handle};

use crate::error;
use crate::plan::DevRoute;

pub struct Indexes<'a> {
    h: &'a Handle,
    known: Vec<(String, u32)>,
}

impl<'a> Indexes<'a> {
    pub fn new(h: &'a Handle) -> Indexes<'a> {
        Indexes { h, known: Vec::new() }
    }

    /// Records an index already known (a link just created, or read with the facts).
    pub fn learn(&mut self, name: &str, index: u32) {
        self.known.retain(|(n, _)| n != name);
        self.known.push((name.to_string(), index));
    }

    pub fn get(&mut self, name: &str) -> Result<u32, CniError> {
        self.lookup(name).map_err(error::kernel(format!("finding {name}")))
    }

    fn lookup(&mut self, name: &str) -> knit_host::Result<u32> {
        if let Some((_, i)) = self.known.iter().find(|(n, _)| n == name) {
            return Ok(*i);
        }
        let i = link::index_of(self.h, name)?;
        self.known.push((name.to_string(), i));
        Ok(i)
    }

    /// The route with its device's index filled in.
    pub fn resolve(&mut self, r: &DevRoute) -> Result<Route, CniError> {
        self.try_resolve(r).map_err(error::kernel(format!("finding the device of {r}")))
    }

    /// Like [`Indexes::resolve`], keeping knit-host's error (a missing device is "not found").
    pub fn try_resolve(&mut self, r: &DevRoute) -> knit_host::Result<Route> {
        let mut route = r.route.clone();
        if let Some(dev) = &r.dev {
            route.oif = Some(self.lookup(dev)?);
        }
        Ok(route)
    }
}
