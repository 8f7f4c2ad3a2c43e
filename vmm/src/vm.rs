//! A VM built from a [`VmConfig`]: checks everything that can be wrong with the input before
//! creating anything, then KVM VM (in-kernel irqchip and PIT), guest RAM from the pool,
//! kernel/initrd, ACPI tables, zero page, devices, vCPUs; [`Vm::run`] runs it to the end.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::acpi::{self, AcpiConfig};
use crate::balloon::{BalloonControl, MmioRouter, VmBalloon};
use crate::boot::{cmdline, loader, params};
use crate::config::{ConfigError, SerialOutput, VmConfig};
use crate::cpu::topology::CpuTopology;
use crate::cpu::vcpu::{self, Vcpu, VcpuError};
use crate::devices::console_socket::{ConsoleSocket, ConsoleSocketError};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_IRQ, COM1_PORT, UART_PORTS};
use crate::devices::shutdown::{AcpiShutdown, I8042Reset, I8042_PORT, SHUTDOWN_PORT};
use crate::devices::virtio::balloon::AttachError;
use crate::devices::{BusError, PioBus};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::{ExitReason, ExitSignal};
use crate::hotplug::{HotplugError, VmHotplug};
use crate::layout::{GuestMemoryMap, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::backing::BackingAllocator;
use crate::memory::host::{host_node_bytes, host_node_exists, HostMemory, HostMemoryError};
use crate::memory::pool::PoolBacking;
use crate::memory::{GuestRam, MemoryError};

/// Everything that can stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kernel or initrd unusable, or memory too small for them.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// Bad command line.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// More vCPUs than this host's KVM supports.
    #[error("--vcpus {0} exceeds this host's KVM limit of {1} (KVM_CAP_MAX_VCPUS)")]
    TooManyVcpus(u32, usize),
    /// The host node's memory cannot be read.
    #[error("cannot read the size of host node {0} (/sys/devices/system/node/node{0}/meminfo)")]
    HostNodeSize(u32),
    /// The host memory pool could not be built.
    #[error(transparent)]
    Pool(#[from] crate::memory::pool::PoolBackingError),
    /// A guest node names a host node that does not exist.
    #[error("guest NUMA node {0} is backed by host node {1}, which does not exist on this host")]
    NoHostNode(u32, u32),
    /// The serial output file cannot be created.
    #[error("cannot create serial output file {0}: {1}")]
    SerialFile(std::path::PathBuf, std::io::Error),
    /// The serial console socket cannot be set up.
    #[error(transparent)]
    ConsoleSocket(#[from] ConsoleSocketError),
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("{0}: {1}")]
    KvmIoctl(&'static str, kvm_ioctls::Error),
    /// Host memory (memfds) could not be set up.
    #[error(transparent)]
    HostMemory(#[from] HostMemoryError),
    /// Guest RAM could not be built.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Zero page could not be written.
    #[error(transparent)]
    Params(#[from] params::ParamsError),
    /// A vCPU could not be created.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device wiring failed.
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    /// An EventFd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A vCPU thread could not be spawned.
    #[error("spawning vCPU thread {0}: {1}")]
    Thread(u32, std::io::Error),
    /// Writing the command line into guest memory failed.
    #[error("writing the command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    /// virtio-mem could not be wired in.
    #[error(transparent)]
    Hotplug(#[from] HotplugError),
    /// Hot-pluggable memory was asked for without a pool to take it from.
    #[error("guest node {0} has hotplug_size set, but this VM has no memory pool for it")]
    HotplugWithoutPool(u32),
    /// The virtio-balloon could not be wired in.
    #[error("virtio-balloon: {0}")]
    Balloon(#[from] AttachError),
}

impl VmError {
    /// Whether the error is the user's input (CLI exit code 2) rather than a host failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            VmError::Config(_)
                | VmError::Loader(_)
                | VmError::Cmdline(_)
                | VmError::TooManyVcpus(..)
                | VmError::NoHostNode(..)
                | VmError::SerialFile(..)
                | VmError::ConsoleSocket(
                    ConsoleSocketError::NotASocket(_) | ConsoleSocketError::InUse(_)
                )
                | VmError::Memory(MemoryError::Backing(_))
        )
    }
}

/// Creates the KVM VM with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
pub fn create_vm_fd(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(|e| VmError::KvmIoctl("KVM_SET_TSS_ADDR", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(|e| VmError::KvmIoctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::KvmIoctl("KVM_CREATE_PIT2", e))?;
    Ok(vm)
}

/// The legacy devices: COM1 (interrupt through an irqfd on GSI 4), the ACPI shutdown
/// registers and the i8042 reset line.
pub fn create_devices(
    vm: &VmFd,
    exit: &Arc<ExitSignal>,
    serial_out: SerialOut,
) -> Result<(PioBus, Arc<Mutex<SerialDevice>>), VmError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| VmError::KvmIoctl("KVM_IRQFD", e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, serial_out)));
    let mut bus = PioBus::new();
    bus.insert(COM1_PORT, UART_PORTS, serial.clone())?;
    bus.insert(
        SHUTDOWN_PORT,
        1,
        Arc::new(Mutex::new(AcpiShutdown::new(exit.clone()))),
    )?;
    bus.insert(
        I8042_PORT,
        1,
        Arc::new(Mutex::new(I8042Reset::new(exit.clone()))),
    )?;
    Ok((bus, serial))
}

/// A built VM, ready to run.
pub struct Vm {
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<SerialDevice>>,
    exit: Arc<ExitSignal>,
    serial_input: bool,
    /// The console socket, if the console is one (listening while the VM lives).
    _console_socket: Option<ConsoleSocket>,
    // Drop order: the VM fd (and its memslots) before the RAM they point to.
    _vm: VmFd,
    hotplug: Option<Arc<VmHotplug>>,
    balloon: Option<Arc<VmBalloon>>,
    ram: GuestRam,
    allocator: Box<dyn BackingAllocator>,
    _host: Arc<HostMemory>,
    map: GuestMemoryMap,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The balloon lets go of guest memory first (the control plane may still hold it).
        if let Some(b) = &self.balloon {
            b.quiesce();
        }
        // Give plugged virtio-mem blocks and the boot RAM back to the pool.
        if let Some(h) = &self.hotplug {
            h.release_all();
        }
        self.allocator.free(self.ram.extents());
    }
}

impl Vm {
    /// Builds the VM with its own host memory pool over the host nodes it uses (each node's
    /// whole memory, one memfd per node), the serial console as the config says.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        let prepared = Prepared::check(config)?;
        let mut host_nodes: Vec<u32> = config.nodes().iter().map(|n| n.host_node).collect();
        host_nodes.sort_unstable();
        host_nodes.dedup();
        let sizes = host_nodes
            .iter()
            .map(|&n| {
                host_node_bytes(n)
                    .map(|b| (n, b))
                    .ok_or(VmError::HostNodeSize(n))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let movablecore = hotplug_movablecore(config, host_nodes.len() as u64);
        let pool = PoolBacking::new(&sizes, None, movablecore.as_deref())?;
        let host = Arc::new(HostMemory::new(&pool.memfd_sizes())?);
        let console = Console::open(&config.serial_output)?;
        prepared.build(config, host, Box::new(pool.clone()), Some(&pool), console)
    }

    /// Builds the VM on shared host memory with its RAM and its virtio-mem blocks from
    /// `pool` (boot RAM from the kernel zones, plugged blocks from ZONE_MOVABLE).
    pub fn with_pool(
        config: &VmConfig,
        host: Arc<HostMemory>,
        pool: &PoolBacking,
        console: Console,
    ) -> Result<Self, VmError> {
        Prepared::check(config)?.build(config, host, Box::new(pool.clone()), Some(pool), console)
    }

    /// The virtio-balloon, for the control plane (None if the config has none).
    pub fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon.clone().map(|b| b as Arc<dyn BalloonControl>)
    }

    /// The virtio-mem devices, for the control plane (None without hot-pluggable memory).
    pub fn hotplug(&self) -> Option<Arc<dyn crate::control::machine::HotplugMemory>> {
        self.hotplug.as_ref().map(|h| h.hotplug_memory())
    }

    /// Builds the VM on shared host memory with the given allocator (the pool) and serial
    /// output.
    pub fn with_backing(
        config: &VmConfig,
        host: Arc<HostMemory>,
        allocator: Box<dyn BackingAllocator>,
        console: Console,
    ) -> Result<Self, VmError> {
        Prepared::check(config)?.build(config, host, allocator, None, console)
    }

    /// Where the boot RAM lives in the host memory (extents from the VM's allocator).
    pub fn boot_extents(&self) -> &[crate::memory::backing::BackingExtent] {
        self.ram.extents()
    }

    /// The guest memory map this VM got.
    pub fn memory_map(&self) -> &GuestMemoryMap {
        &self.map
    }

    /// The VM's exit signal: `request(ExitReason::Stopped)` stops it from another thread.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Runs the VM until the guest powers off or resets, a vCPU fails, or (with `signals`)
    /// SIGTERM/SIGINT arrives. Returns why it stopped.
    pub fn run(mut self, signals: bool) -> Result<ExitReason, VmError> {
        let mut event_loop = EventLoop::new(self.exit.clone(), signals)?;
        let _raw = if self.serial_input {
            event_loop.add_serial_input(libc::STDIN_FILENO, self.serial.clone());
            crate::terminal::RawTerminal::enable(libc::STDIN_FILENO)
        } else {
            None
        };
        let device_subscribers = self
            .hotplug
            .iter()
            .flat_map(|h| h.take_subscribers())
            .chain(self.balloon.iter().flat_map(|b| b.take_subscribers()));
        for s in device_subscribers {
            event_loop.add_subscriber(s);
        }
        let handles = spawn_vcpus(std::mem::take(&mut self.vcpus), &self.exit)?;
        self.exit.pause_gate().set_threads(
            handles
                .iter()
                .map(std::os::unix::thread::JoinHandleExt::as_pthread_t)
                .collect(),
            vcpu::kick_signal(),
        );
        let result = event_loop.run();
        if result.is_err() {
            self.exit
                .request(ExitReason::Error("event loop failed".into()));
        }
        stop_vcpus(handles);
        result?;
        Ok(self.exit.reason().unwrap_or(ExitReason::Stopped))
    }
}

/// Spawns one thread per vCPU; on failure stops the ones already running.
pub fn spawn_vcpus(
    vcpus: Vec<Vcpu>,
    exit: &Arc<ExitSignal>,
) -> Result<Vec<JoinHandle<()>>, VmError> {
    let mut handles = Vec::new();
    for (i, v) in vcpus.into_iter().enumerate() {
        match std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || v.run())
        {
            Ok(h) => handles.push(h),
            Err(e) => {
                exit.request(ExitReason::Error("spawning vCPU threads failed".into()));
                stop_vcpus(handles);
                return Err(VmError::Thread(i as u32, e));
            }
        }
    }
    Ok(handles)
}

/// Kicks every vCPU thread out of KVM_RUN until it has seen the exit request, then joins it.
pub fn stop_vcpus(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        while !h.is_finished() {
            let _ = h.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = h.join();
    }
}

/// `movablecore=` for a pool of `host_nodes` nodes that must hold every host node's
/// hot-pluggable memory in ZONE_MOVABLE (the kernel spreads movablecore evenly over the
/// nodes), plus room for the zones' watermarks; None without hot-pluggable memory.
fn hotplug_movablecore(config: &VmConfig, host_nodes: u64) -> Option<String> {
    let mut per_node = std::collections::BTreeMap::<u32, u64>::new();
    for n in config.nodes() {
        *per_node.entry(n.host_node).or_default() += n.hotplug_size;
    }
    let most = per_node.values().copied().max().filter(|&b| b > 0)?;
    Some(format!("{}", (most + (64 << 20)) * host_nodes))
}

/// The VM's console: what the UART writes to, and the console socket (if any) whose clients
/// feed its input.
pub struct Console {
    out: SerialOut,
    socket: Option<ConsoleSocket>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Opens the console `output` names: stdout, a file (created or truncated) or a listening
    /// Unix socket.
    pub fn open(output: &SerialOutput) -> Result<Console, VmError> {
        Ok(match output {
            SerialOutput::Stdout => Console::writer(Box::new(std::io::stdout())),
            SerialOutput::File(p) => Console::writer(Box::new(
                File::create(p).map_err(|e| VmError::SerialFile(p.clone(), e))?,
            )),
            SerialOutput::Socket(p) => {
                let (socket, out) = ConsoleSocket::bind(p)?;
                Console {
                    out: Box::new(out),
                    socket: Some(socket),
                }
            }
        })
    }

    /// A console that only writes to `out` (no input but the VMM's stdin, if configured).
    pub fn writer(out: SerialOut) -> Console {
        Console { out, socket: None }
    }
}

/// The outcome of the checks that run before anything is created.
struct Prepared {
    images: loader::BootImages,
    map: GuestMemoryMap,
    cmdline: linux_loader::cmdline::Cmdline,
    kvm: Kvm,
}

impl Prepared {
    fn check(config: &VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let images = loader::BootImages::open(&config.kernel, config.initrd.as_deref())?;
        let map = GuestMemoryMap::new(&config.nodes());
        images.check_fits(map.low_ram_end())?;
        let cmdline = cmdline::build(config)?;
        for n in config.nodes() {
            if !host_node_exists(n.host_node) {
                return Err(VmError::NoHostNode(n.guest_node, n.host_node));
            }
        }
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let max = kvm.get_max_vcpus();
        if config.vcpus as usize > max {
            return Err(VmError::TooManyVcpus(config.vcpus, max));
        }
        Ok(Prepared {
            images,
            map,
            cmdline,
            kvm,
        })
    }

    fn build(
        mut self,
        config: &VmConfig,
        host: Arc<HostMemory>,
        mut allocator: Box<dyn BackingAllocator>,
        pool: Option<&PoolBacking>,
        console: Console,
    ) -> Result<Vm, VmError> {
        let Console {
            out: serial_out,
            socket: console_socket,
        } = console;
        if let (Some(h), None) = (self.map.hotplug.first(), pool) {
            return Err(VmError::HotplugWithoutPool(h.guest_node));
        }
        let vm = create_vm_fd(&self.kvm)?;
        let ram = GuestRam::new(&self.map, &host, allocator.as_mut(), Some(&vm))?;
        // From here on the RAM's extents go back to the allocator if anything fails.
        let built = (|| {
            let mem = ram.memory();
            let hotplug = match pool {
                Some(pool) => VmHotplug::attach(
                    &vm,
                    &self.map,
                    mem,
                    ram.next_slot(),
                    pool,
                    &host,
                    config.hotplug_block_size,
                )?
                .map(Arc::new),
                None => None,
            };
            let balloon = match config.balloon {
                Some(c) => {
                    let all = hotplug.as_ref().map_or(mem, |h| h.memory());
                    let plugged = hotplug.as_ref().map(|h| h.plugged_check());
                    Some(Arc::new(VmBalloon::attach(&vm, mem, all, c, plugged)?))
                }
                None => None,
            };
            let mut virtio_devices = hotplug.as_ref().map_or(Vec::new(), |h| h.acpi().to_vec());
            virtio_devices.extend(balloon.as_ref().map(|b| b.acpi().clone()));
            let mut router = MmioRouter::default();
            if let Some(h) = &hotplug {
                router.push(h.clone());
            }
            if let Some(b) = &balloon {
                router.push(b.clone());
            }
            let router = Arc::new(router);
            let kernel = self.images.load(mem, self.map.low_ram_end())?;
            linux_loader::loader::load_cmdline(
                mem,
                vm_memory::GuestAddress(crate::layout::CMDLINE_START),
                &self.cmdline,
            )
            .map_err(VmError::CmdlineLoad)?;
            let vcpu_nodes = config.vcpu_nodes();
            let topo = CpuTopology::new(&vcpu_nodes);
            let rsdp = acpi::create_acpi_tables(
                mem,
                &AcpiConfig {
                    vcpu_nodes: &vcpu_nodes,
                    apic_ids: topo.apic_ids(),
                    nodes: config.nodes().len() as u32,
                    map: &self.map,
                    virtio_devices: &virtio_devices,
                },
            )?;
            let cmdline_len = self
                .cmdline
                .as_cstring()
                .map(|c| c.as_bytes().len())
                .unwrap_or(0);
            params::write_boot_params(
                mem,
                &kernel,
                cmdline_len,
                &params::e820_map(&self.map),
                rsdp,
            )?;

            let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
            let (bus, serial) = create_devices(&vm, &exit, serial_out)?;
            if let Some(c) = &console_socket {
                c.attach_input(serial.clone());
            }
            let bus = Arc::new(bus);
            vcpu::install_kick_handler()?;
            let mut base_cpuid = self
                .kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| VmError::KvmIoctl("KVM_GET_SUPPORTED_CPUID", e))?;
            config.cpu_template.apply(&mut base_cpuid);
            let tsc_deadline = self.kvm.check_extension(Cap::TscDeadlineTimer);
            let mut vcpus = Vec::new();
            for &id in topo.apic_ids() {
                let mut v = Vcpu::new(
                    &vm,
                    id,
                    &topo,
                    &base_cpuid,
                    tsc_deadline,
                    bus.clone(),
                    exit.clone(),
                )?;
                // KVM's boot vCPU is the one with id 0; the others wait for INIT/SIPI.
                if id == 0 {
                    v.setup_boot(mem, kernel.entry)?;
                } else {
                    v.setup_ap()?;
                }
                if !router.is_empty() {
                    v.set_mmio_handler(router.clone());
                }
                vcpus.push(v);
            }
            Ok::<_, VmError>((vcpus, serial, exit, hotplug, balloon))
        })();
        match built {
            Ok((vcpus, serial, exit, hotplug, balloon)) => Ok(Vm {
                hotplug,
                balloon,
                vcpus,
                serial,
                exit,
                serial_input: config.serial_input,
                _console_socket: console_socket,
                _vm: vm,
                ram,
                allocator,
                _host: host,
                map: self.map,
            }),
            Err(e) => {
                allocator.free(ram.extents());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumaNodeConfig;
    use crate::memory::backing::LinearBacking;
    use std::io::Write;
    use std::sync::Mutex as StdMutex;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<StdMutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Real-mode code: print "OK" on COM1, then power off through the ACPI sleep register.
    const PROGRAM: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', // mov al, 'O'
        0xee, // out dx, al
        0xb0, b'K', // mov al, 'K'
        0xee, // out dx, al
        0xba, 0x00, 0x06, // mov dx, 0x600
        0xb0, 0x34, // mov al, (5 << 2) | SLP_EN
        0xee, // out dx, al
        0xf4, // hlt
    ];

    /// On the local (nested) KVM a real-mode guest runs on a vCPU thread, its port I/O
    /// reaches the serial device and the shutdown register ends the VM.
    #[test]
    fn real_mode_guest_prints_and_powers_off() {
        let kvm = Kvm::new().expect("this test needs /dev/kvm");
        let vm = create_vm_fd(&kvm).expect("vm");
        let nodes = [NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0],
            memory: 16 << 20,
            host_node: 0,
            hotplug_size: 0,
        }];
        let map = GuestMemoryMap::new(&nodes);
        let host = HostMemory::new(&[(0, 16 << 20)]).expect("memfd");
        let mut alloc = LinearBacking::new(&[(0, 16 << 20)]);
        let ram = GuestRam::new(&map, &host, &mut alloc, Some(&vm)).expect("ram");
        ram.memory()
            .write_slice(PROGRAM, GuestAddress(0x1000))
            .expect("program");
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let out = SharedBuf::default();
        let (bus, _serial) = create_devices(&vm, &exit, Box::new(out.clone())).expect("devices");
        vcpu::install_kick_handler().expect("handler");
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("cpuid");
        let topo = CpuTopology::new(&[0]);
        let v = Vcpu::new(&vm, 0, &topo, &cpuid, false, Arc::new(bus), exit.clone()).expect("vcpu");
        let mut sregs = v.fd().get_sregs().expect("sregs");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        v.fd().set_sregs(&sregs).expect("sregs");
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        v.fd().set_regs(&regs).expect("regs");
        let handles = spawn_vcpus(vec![v], &exit).expect("spawn");
        let mut event_loop = EventLoop::new(exit.clone(), false).expect("loop");
        event_loop.run().expect("run");
        stop_vcpus(handles);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
        assert_eq!(&*out.0.lock().expect("lock"), b"OK");
    }

    /// An external stop request ends a VM whose vCPU is halted inside KVM.
    #[test]
    fn stop_request_kicks_halted_vcpus() {
        let kvm = Kvm::new().expect("this test needs /dev/kvm");
        let vm = create_vm_fd(&kvm).expect("vm");
        let map = GuestMemoryMap::new(&[NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0, 1],
            memory: 16 << 20,
            host_node: 0,
            hotplug_size: 0,
        }]);
        let host = HostMemory::new(&[(0, 16 << 20)]).expect("memfd");
        let mut alloc = LinearBacking::new(&[(0, 16 << 20)]);
        let ram = GuestRam::new(&map, &host, &mut alloc, Some(&vm)).expect("ram");
        // cli; hlt: sleeps forever in the in-kernel LAPIC.
        ram.memory()
            .write_slice(&[0xfa, 0xf4], GuestAddress(0x1000))
            .expect("program");
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let (bus, _serial) =
            create_devices(&vm, &exit, Box::new(std::io::sink())).expect("devices");
        let bus = Arc::new(bus);
        vcpu::install_kick_handler().expect("handler");
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("cpuid");
        let mut vcpus = Vec::new();
        let topo = CpuTopology::new(&[0, 0]);
        for id in 0..2 {
            let v =
                Vcpu::new(&vm, id, &topo, &cpuid, false, bus.clone(), exit.clone()).expect("vcpu");
            if id == 1 {
                v.setup_ap().expect("AP waits for SIPI");
            }
            if id == 0 {
                let mut sregs = v.fd().get_sregs().expect("sregs");
                sregs.cs.base = 0;
                sregs.cs.selector = 0;
                v.fd().set_sregs(&sregs).expect("sregs");
                let regs = kvm_bindings::kvm_regs {
                    rip: 0x1000,
                    rflags: 2,
                    ..Default::default()
                };
                v.fd().set_regs(&regs).expect("regs");
            }
            vcpus.push(v);
        }
        let handles = spawn_vcpus(vcpus, &exit).expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        assert!(handles.iter().all(|h| !h.is_finished()));
        exit.request(ExitReason::Stopped);
        stop_vcpus(handles);
        assert_eq!(exit.reason(), Some(ExitReason::Stopped));
    }
}
