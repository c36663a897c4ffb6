"""The benchmark's questions, as specs that bench/qa/make_questions.py turns into JSON lines:
q(kind, question, file, regex of the gold line(s), literal answer key(s), ...) and
no(question, regexes that must occur nowhere) for the ones the data cannot answer."""

from __future__ import annotations

import re
from collections import Counter

IP = r"\d+\.\d+\.\d+\.\d+"
SSH, HDFS, HADOOP = "OpenSSH_2k.log", "HDFS_2k.log", "Hadoop_2k.log"
SPARK, APACHE, LINUX = "Spark_2k.log", "Apache_2k.log", "Linux_2k.log"
POSTMORTEM = "reports/postmortem-inc-2041.md"
CAPACITY = "reports/capacity-test-ct-77.rst"
RUNBOOK = "reports/runbook-rb-12.pdf"


def unique(data, file: str, pattern: str, limit: int, key: int = 1) -> list[re.Match]:
    """The matches of pattern whose group `key` occurs on no other matching line, evenly
    spread over the file, at most `limit`."""
    regex = re.compile(pattern)
    found = [m for line in data.files[file] if (m := regex.search(line))]
    counts = Counter(m[key] for m in found)
    once = [m for m in found if counts[m[key]] == 1]
    step = max(1, len(once) // limit)
    return once[::step][:limit]


def write_specs(data, q, no) -> None:
    families(data, q)
    openssh(q)
    hdfs(q)
    hadoop(q)
    spark(q)
    apache(q)
    linux(q)
    reports(q)
    unanswerable(no)


def families(data, q) -> None:
    """The same question asked of each entity a log names once."""
    invalid = unique(data, SSH, rf"Invalid user (\S+) from ({IP})", 24)
    for m in invalid[0::2]:
        q("literal", f"Which IP address tried to log in as the invalid user {m[1]}?", SSH,
          rf"Invalid user {re.escape(m[1])} from", m[2])
    for m in invalid[1::2]:
        q("paraphrase", f"Someone attempted an SSH login with the nonexistent account name "
                        f"'{m[1]}'. Where did that attempt come from?", SSH,
          rf"Invalid user {re.escape(m[1])} from", m[2])
    for m in unique(data, SSH, rf"Failed password for invalid user (\S+) from ({IP}) port "
                               rf"(\d+)", 8):
        q("two-line", f"The invalid user {m[1]} was tried from which address, and from which "
                      f"port did its password fail?", SSH,
          [rf"Invalid user {re.escape(m[1])} from {re.escape(m[2])}",
           rf"Failed password for invalid user {re.escape(m[1])} from"],
          [m[2], m[3]], mode="all", pick="first")
    for m in unique(data, SSH, rf"reverse mapping checking getaddrinfo for (\S+) \[({IP})\]",
                    8):
        q("literal", f"Reverse mapping checking getaddrinfo for {m[1]} failed: what IP address "
                     f"was it?", SSH, rf"getaddrinfo for {re.escape(m[1])} ", m[2])
    received = unique(data, HDFS, rf"Received block (blk_-?\d+) of size (\d+) from /({IP})", 12)
    for m in received[0::2]:
        q("literal", f"From which address was block {m[1]} received?", HDFS,
          rf"Received block {m[1]} of size", m[3])
    for m in received[1::2]:
        q("paraphrase", f"Which machine sent us the data of block {m[1]}?", HDFS,
          rf"Received block {m[1]} of size", m[3])
    for m in unique(data, HDFS, r"allocateBlock: (\S+)\. (blk_-?\d+)", 10):
        q("literal", f"Which block did the NameSystem allocate for {m[1]}?", HDFS,
          rf"allocateBlock: {re.escape(m[1])}\.", m[2])
    for m in unique(data, HDFS, rf"Got exception while serving (blk_-?\d+) to /({IP})", 8):
        q("paraphrase", f"A datanode hit an exception while handing out block {m[1]}. Which "
                        f"client was it serving?", HDFS,
          rf"Got exception while serving {m[1]} ", m[2])
    for m in unique(data, HADOOP, r"Assigned container (container_\S+) to (attempt_\S+)", 6,
                    key=2):
        q("literal", f"Which container was assigned to {m[2]}?", HADOOP,
          rf"Assigned container \S+ to {m[2]}$", m[1])
    for m in unique(data, HADOOP, r"JVM with ID: (jvm_\S+) given task: (attempt_\S+)", 6):
        q("paraphrase", f"What task attempt did the JVM {m[1]} get handed?", HADOOP,
          rf"JVM with ID: {m[1]} given task", m[2])
    broadcast = unique(data, SPARK, r"Reading broadcast variable (\d+) took (\d+) ms", 12)
    for m in broadcast[0::2]:
        q("literal", f"How long did reading broadcast variable {m[1]} take?", SPARK,
          rf"Reading broadcast variable {m[1]} took", f"{m[2]} ms")
    for m in broadcast[1::2]:
        q("paraphrase", f"How many milliseconds did the executor spend fetching broadcast "
                        f"variable {m[1]}?", SPARK, rf"Reading broadcast variable {m[1]} took",
          m[2])
    for m in unique(data, SPARK, r"Finished task \S+ in stage \S+ \(TID (\d+)\)\. (\d+) bytes",
                    10):
        q("literal", f"How many bytes of result did TID {m[1]} send to the driver?", SPARK,
          rf"\(TID {m[1]}\)\. \d+ bytes", m[2])
    for m in unique(data, SPARK, r"Running task (\S+) in stage (\S+) \(TID (\d+)\)", 8, key=3):
        q("paraphrase", f"Which task and stage did the executor run as TID {m[3]}?", SPARK,
          rf"Running task \S+ in stage \S+ \(TID {m[3]}\)", [m[1], m[2]], mode="all")
    for m in unique(data, APACHE, rf"^\[\w+ (\w+ \d+ [\d:]+) \d+\] \[error\] \[client ({IP})\] "
                                  r"Directory index forbidden", 8, key=2):
        q("time", f"When was client {m[2]} refused a directory index?", APACHE,
          rf"\[client {re.escape(m[2])}\] Directory index", m[1])
    for m in unique(data, APACHE, r"^\[\w+ (\w+ \d+ [\d:]+) \d+\] \[error\] jk2_init\(\) "
                                  r"Can't find child (\d+)", 6, key=2):
        q("time", f"At what time could jk2_init not find child {m[2]} in the scoreboard?",
          APACHE, rf"Can't find child {m[2]} in", m[1])
    for m in unique(data, LINUX, rf"ftpd\[\d+\]: connection from ({IP}) \(([^)]+)\)", 6, key=2):
        q("literal", f"What IP address did the FTP connection from {m[2]} come from?", LINUX,
          rf"connection from \S+ \({re.escape(m[2])}\)", m[1])


def openssh(q) -> None:
    q("literal", "Which host had the first POSSIBLE BREAK-IN ATTEMPT warning?", SSH,
      r"POSSIBLE BREAK-IN ATTEMPT", ["ns.marryaldkfaczcz.com", "173.234.31.186"], pick="first")
    q("time", "When was the first invalid user login attempt logged?", SSH, r"Invalid user",
      "06:55:46", pick="first")
    q("time", "What time was the last 'Bye Bye' disconnect?", SSH, r"Bye Bye", "11:04:43",
      pick="last")
    q("literal", "Which host did not send an identification string first?", SSH,
      r"Did not receive identification string", "123.235.32.19", pick="first")
    q("count", "How many times did sshd log 'Did not receive identification string'?", SSH,
      r"Did not receive identification string", "10", pick="all", count=10)
    q("count", "How many times did sshd say it was ignoring max retries?", SSH,
      r"ignoring max retries", "7", pick="all", count=7)
    q("literal", "What does PAM say about max retries for the sshd service?", SSH,
      r"PAM service\(sshd\) ignoring max retries", "6 > 3", pick="first")
    q("paraphrase", "Which account was most often targeted by failed password attempts?", SSH,
      r"Failed password for root from", "root", pick="first")
    q("time", "After 10:00 on Dec 10, what address was the first to fail a password for root?",
      SSH, r"Dec 10 1\d:\d\d:\d\d .*Failed password for root from", "60.2.12.12",
      pick="first")
    q("literal", "Which user logged in successfully over SSH on LabSZ?", SSH,
      r"Accepted password for", "fztu")
    q("paraphrase", "One password login got through on LabSZ: from which address?", SSH,
      r"Accepted password for", "119.137.62.142")
    q("literal", "What process id logged the first break-in warning for ns.marryaldkfaczcz.com?",
      SSH, r"ns\.marryaldkfaczcz\.com", "24200", pick="first")
    q("count", "How many connections were closed by 194.190.163.22 before authentication?", SSH,
      r"Connection closed by 194\.190\.163\.22 \[preauth\]", "4", pick="all", count=4)


def hdfs(q) -> None:
    q("literal", "Which datanode was asked to replicate block blk_-7571492020523929240?", HDFS,
      r"to replicate blk_-7571492020523929240", "10.250.14.38")
    q("paraphrase", "Where was block blk_-7571492020523929240 supposed to be copied to?", HDFS,
      r"to replicate blk_-7571492020523929240", "10.251.122.38")
    q("literal", "Which datanode started a thread to transfer block blk_4292382298896622412?",
      HDFS, r"Starting thread to transfer block", "10.250.15.198")
    q("paraphrase", "To which node did 10.250.15.198 push block blk_4292382298896622412?", HDFS,
      r"Starting thread to transfer block", "10.250.15.240")
    q("literal", "Which datanode was asked to delete block blk_-5140072410813878235?", HDFS,
      r"ask \S+ to delete  blk_-5140072410813878235", "10.250.18.114")
    q("literal", "Which datanode was asked to delete block blk_8048594464172649365?", HDFS,
      r"ask \S+ to delete  blk_8048594464172649365", "10.251.122.79")
    q("time", "When was the block blk_-4411589101766563890 received with src and dest "
              "10.250.14.38?", HDFS, r"Received block blk_-4411589101766563890 src",
      "050334")
    q("count", "How many times did the NameSystem ask a datanode to delete a batch of blocks?",
      HDFS, r"BLOCK\* ask \S+ to delete", "5", pick="all", count=5)
    q("count", "How many times was a block verified successfully by the DataBlockScanner?",
      HDFS, r"Verification succeeded for", "20", pick="all", count=20)
    q("time", "Which block was the first one verified by the DataBlockScanner?", HDFS,
      r"Verification succeeded for", "blk_-4980916519894289629", pick="first")
    q("literal", "What size was the block that 10.251.73.220 added to the blockMap at "
                 "081109 204005?", HDFS, r"^081109 204005 .*addStoredBlock", "67108864")
    q("time", "What was the last block added to the invalidSet?", HDFS, r"invalidSet of",
      "blk_4516306414837452219", pick="last")
    q("two-line", "Block blk_1473949624670719319 was received from which source, and what "
                  "size was it?", HDFS,
      r"Received block blk_1473949624670719319 src", ["10.251.29.239", "67108864"],
      mode="all")
    q("literal", "Which packet responder terminated first for block blk_38865049064139660?",
      HDFS, r"PacketResponder \d for block blk_38865049064139660 terminating",
      "PacketResponder 1", pick="first")


def hadoop(q) -> None:
    q("literal", "What application attempt was the MRAppMaster created for?", HADOOP,
      r"Created MRAppMaster for application", "appattempt_1445144423722_0020_000001")
    q("literal", "What was the input size of job job_1445144423722_0020?", HADOOP,
      r"Input size for job", "1256521728")
    q("paraphrase", "Into how many splits was the MapReduce job's input cut?", HADOOP,
      r"Number of splits", "10")
    q("literal", "How many reduces did job job_1445144423722_0020 have?", HADOOP,
      r"Number of reduces for job", "1")
    q("paraphrase", "Why was the job not run in uber mode?", HADOOP, r"Not uberizing",
      ["too many maps", "too much input", "not enabled"])
    q("literal", "At which address was the MRClientService instantiated?", HADOOP,
      r"Instantiated MRClientService", "10.86.169.121:62260")
    q("literal", "Which port did Jetty bind to?", HADOOP, r"Jetty bound to port", "62267")
    q("paraphrase", "Where is the ResourceManager the job connects to?", HADOOP,
      r"Connecting to ResourceManager at", "10.190.173.170:8030")
    q("literal", "What is the maxContainerCapability of the RMContainerAllocator?", HADOOP,
      r"maxContainerCapability", "memory:8192")
    q("literal", "What is maxTaskFailuresPerNode?", HADOOP, r"maxTaskFailuresPerNode is", "3")
    q("literal", "What is blacklistDisablePercent set to?", HADOOP,
      r"blacklistDisablePercent is", "33")
    q("literal", "What is the default file system of the job history?", HADOOP,
      r"Default file system", "hdfs://msra-sa-41:9000", pick="first")
    q("time", "When was ERROR IN CONTACTING RM first logged?", HADOOP, r"ERROR IN CONTACTING RM",
      "18:06:01", pick="first")
    q("time", "What was the last progress reported for attempt_1445144423722_0020_m_000000_0?",
      HADOOP, r"Progress of TaskAttempt attempt_1445144423722_0020_m_000000_0 is",
      "0.3624012", pick="last")
    q("paraphrase", "For how long had the lease renewer failed to renew the lease at the end "
                    "of the log?", HADOOP, r"Failed to renew lease", "356 seconds", pick="last")
    q("paraphrase", "Why did attempt_1445144423722_0020_m_000002_0 fail?", HADOOP,
      r"Diagnostics report from attempt_1445144423722_0020_m_000002_0", "NoRouteToHost",
      pick="first")
    q("literal", "What was the mapResourceRequest of the job?", HADOOP, r"mapResourceRequest",
      "memory:1024")
    q("two-line", "Which ports did the IPC Server listeners start on?", HADOOP,
      [r"IPC Server listener on 62260: starting", r"IPC Server listener on 62270: starting"],
      ["62260", "62270"], mode="all")


def spark(q) -> None:
    q("literal", "What capacity did the MemoryStore start with?", SPARK,
      r"MemoryStore started with capacity", "17.7 GB")
    q("literal", "On which port did sparkExecutorActorSystem start?", SPARK,
      r"Successfully started service 'sparkExecutorActorSystem'", "55904")
    q("paraphrase", "Which port does the netty block transfer service listen on?", SPARK,
      r"NettyBlockTransferService: Server created on", "40984")
    q("literal", "What executor ID was started on host mesos-slave-07?", SPARK,
      r"Starting executor ID", "5")
    q("paraphrase", "Where is the Spark driver the executor connected to?", SPARK,
      r"Connecting to driver", "10.10.34.11:48069")
    q("literal", "Which signals did the CoarseGrainedExecutorBackend register handlers for?",
      SPARK, r"Registered signal handlers", ["TERM", "HUP", "INT"], mode="all")
    q("literal", "Who has view permissions according to the SecurityManager?", SPARK,
      r"users with view permissions", ["yarn", "curi"], mode="all", pick="first")
    q("paraphrase", "Where did the DiskBlockManager put its local directory?", SPARK,
      r"Created local directory at", "application_1485248649253_0147")
    q("literal", "What is mapred.tip.id deprecated in favour of?", SPARK,
      r"mapred\.tip\.id is deprecated", "mapreduce.task.id")
    q("time", "Which broadcast variable was read first?", SPARK,
      r"Started reading broadcast variable", "9", pick="first")
    q("time", "What TID was the first task the executor got assigned?", SPARK,
      r"Got assigned task", "0", pick="first")
    q("count", "How many times did the FileOutputCommitter save a task's output?", SPARK,
      r"Saved output of task", "30", pick="all", count=30)
    q("two-line", "On which ports did the executor start its actor system and its block "
                  "transfer service?", SPARK,
      [r"started service 'sparkExecutorActorSystem'", r"started service 'org\.apache"],
      ["55904", "40984"], mode="all")


def apache(q) -> None:
    q("literal", "Which file did workerEnv.init() read first?", APACHE, r"workerEnv\.init\(\) ok",
      "/etc/httpd/conf/workers2.properties", pick="first")
    q("time", "When did mod_jk first report workerEnv error state 10?", APACHE,
      r"workerEnv in error state 10", "06:46:34", pick="first")
    q("count", "How many times did mod_jk report workerEnv error state 10?", APACHE,
      r"workerEnv in error state 10", "5", pick="all", count=5)
    q("time", "When was the first mod_jk error state logged?", APACHE,
      r"workerEnv in error state", "04:47:44", pick="first")
    q("count", "How many times was a directory index forbidden by rule?", APACHE,
      r"Directory index forbidden", "32", pick="all", count=32)
    q("count", "How many times did jk2_init fail to find a child in the scoreboard?", APACHE,
      r"Can't find child", "12", pick="all", count=12)
    q("literal", "Which directory was the directory index forbidden for?", APACHE,
      r"Directory index forbidden by rule", "/var/www/html/", pick="first")
    q("paraphrase", "What does 'mod_jk child init' report when it fails?", APACHE,
      r"mod_jk child init", "1 -2", pick="first")
    q("time", "Which client was refused a directory index first?", APACHE,
      r"Directory index forbidden", "222.166.160.184", pick="first")
    q("literal", "In which scoreboard slot was child 6725 found on Dec 04?", APACHE,
      r"Dec 04 .*Found child 6725 in scoreboard", "slot 10")
    q("time", "After 20:00 on Dec 04, which child did jk2_init fail to find first?", APACHE,
      r"Dec 04 2\d:\d\d:\d\d 2005\] \[error\] jk2_init\(\) Can't find child", "2082",
      pick="first")


def linux(q) -> None:
    q("literal", "What Linux kernel version booted on combo?", LINUX, r"kernel: Linux version",
      "2.6.5-1.358")
    q("literal", "Which CPU does the combo host have?", LINUX, r"kernel: CPU: Intel",
      "Pentium III")
    q("paraphrase", "How big is the L2 cache of the machine?", LINUX, r"CPU: L2 cache", "256K")
    q("literal", "Which host failed Kerberos login authentication with klogind?", LINUX,
      r"klogind\[\d+\]: Authentication failed from", "163.27.187.39", pick="first")
    q("literal", "What did snmpd receive and from where on Jun 20?", LINUX,
      r"snmpd\[\d+\]: Received SNMP packet", "67.170.148.126")
    q("time", "When did syslogd restart for the first time?", LINUX, r"syslogd 1\.4\.1: restart",
      "Jun 19 04:09:11", pick="first")
    q("count", "How many times did logrotate exit abnormally?", LINUX,
      r"logrotate: ALERT exited abnormally", "43", pick="all", count=43)
    q("literal", "What exit status did logrotate report when it exited abnormally?", LINUX,
      r"logrotate: ALERT exited abnormally", "[1]", pick="first")
    q("paraphrase", "What did named complain about in the notify messages?", LINUX,
      r"notify question section contains no SOA", "no SOA", pick="first")
    q("count", "How many times did named log that a notify question section contains no SOA?",
      LINUX, r"notify question section contains no SOA", "16", pick="all", count=16)
    q("paraphrase", "Why could the kernel not register its security module?", LINUX,
      r"register_security failed", "already a security framework initialized")
    q("time", "When did cupsd start up for the first time?", LINUX, r"cupsd startup succeeded",
      "Jun 19 04:09:02", pick="first")
    q("literal", "What video console did the kernel report?", LINUX, r"kernel: Console:",
      "colour VGA+ 80x25")
    q("paraphrase", "Which IRQ router does the PCI subsystem use?", LINUX,
      r"Using IRQ router", "PIIX/ICH")
    q("two-line", "Which users had su sessions opened, by name?", LINUX,
      [r"session opened for user news", r"session opened for user cyrus"], ["news", "cyrus"],
      mode="all", pick="first")
    q("literal", "Which device node did udev process 12754 remove?", LINUX,
      r"udev\[12754\]: removing device node", "/udev/vcsa2")
    q("literal", "What mouse did gpm auto-detect?", LINUX, r"gpm\[\d+\]: imps2: Auto-detected",
      "intellimouse PS/2")


def reports(q) -> None:
    q("report", "How long did the HDFS write stall of INC-2041 last?", POSTMORTEM,
      r"^2 hours 35 minutes", "2 hours 35 minutes")
    q("report", "Which datanode triggered INC-2041?", POSTMORTEM, r"trigger was a full root",
      "dn-17")
    q("report", "What IP address does datanode dn-17 have?", POSTMORTEM,
      r"trigger was a full root", "10.4.17.22")
    q("report", "How many block writes failed during INC-2041?", POSTMORTEM,
      r"Failed block writes", "18,406")
    q("report", "How many dashboards showed stale data during the HDFS write stall?", POSTMORTEM,
      r"Dashboards with stale data", "41")
    q("report", "Which switch was wrongly suspected in the HDFS incident?", POSTMORTEM,
      r"Wrong lead", "sw-r4-02")
    q("report", "When was dn-17 decommissioned?", POSTMORTEM, r"dn-17 decommissioned", "11:05")
    q("report", "Who owns action item AI-3 and what is it?", POSTMORTEM, r"\| AI-3 \|",
      "Priya Natarajan")
    q("report", "When is AI-2 due?", POSTMORTEM, r"\| AI-2 \|", "2026-04-04")
    q("report", "Why did the datanode store block files on its root volume?", POSTMORTEM,
      r"mount of /data3 failed", "/data3")
    q("report", "How fast did the root volume of dn-17 fill up?", POSTMORTEM,
      r"4\.1 GB per hour", "4.1 GB")
    q("report", "How long did the re-replication take after the decommission?", POSTMORTEM,
      r"re-replication after the decommission", "19 minutes")
    q("report", "Which job missed its deadline in the HDFS write stall?", POSTMORTEM,
      r"etl-orders-v3", "etl-orders-v3")
    q("report", "What severity was INC-2041 closed at?", POSTMORTEM, r"SEV-2", "SEV-2")
    q("report", "Which alert fired for the HDFS write stall?", POSTMORTEM,
      r"hdfs_write_latency_p99", "hdfs_write_latency_p99")
    q("report", "How much time did the wrong lead cost?", POSTMORTEM, r"wrong lead cost",
      "43 minutes")
    q("report", "Which customer tickets were opened about INC-2041?", POSTMORTEM,
      r"Customer tickets", "TCK-88120")
    q("report", "Which run of capacity test CT-77 gave the best throughput?", CAPACITY,
      r"Run R3 gave the best", "R3")
    q("report", "What throughput did run R2 reach?", CAPACITY, r"^\| R2 ", "1.53 TB/h")
    q("report", "How many executors did run R4 use?", CAPACITY, r"^\| R4 ", "120")
    q("report", "How long did run R1 take in the Spark capacity test?", CAPACITY, r"^\| R1 ",
      "41 min")
    q("report", "How large was the shuffle spill in run R4?", CAPACITY, r"shuffle spill",
      "740 GB")
    q("report", "How many executors were lost to out-of-memory errors in CT-77?", CAPACITY,
      r"executors were lost", "3")
    q("report", "What was spark.sql.shuffle.partitions set to in the capacity test?", CAPACITY,
      r"^was set to 960", "960")
    q("report", "How many executors does the capacity test recommend for logagg-daily?",
      CAPACITY, r"Run ``logagg-daily`` with", "96")
    q("report", "What was the peak memory per executor in CT-77?", CAPACITY, r"Peak memory",
      "12.6 GB")
    q("report", "Which cost centre paid for the capacity test?", CAPACITY, r"cost centre",
      "CC-4410")
    q("report", "Who wrote the Spark capacity test report?", CAPACITY, r":Author:",
      "Daniel Okafor")
    q("report", "How long did Python worker start-up take per task?", CAPACITY,
      r"Python worker start-up", "1.6 seconds")
    q("report", "When should capacity test CT-78 be run?", CAPACITY, r"CT-78", "August 2026")
    q("report", "How much executor memory does the capacity test recommend?", CAPACITY,
      r"Raise executor memory", "16 GB")
    q("report", "How many failed SSH logins from one address within 10 minutes declare an "
                "attack on a host?", RUNBOOK, r"fails authentication 20 times", "20")
    q("report", "How long does fail2ban ban an attacking source at first?", RUNBOOK,
      r"fail2ban bans the source", "30 minutes")
    q("report", "Which address range is never banned by the SSH runbook?", RUNBOOK,
      r"172\.20\.0\.0/16", "172.20.0.0/16")
    q("report", "What phone number do you call for a P1 SSH escalation?", RUNBOOK,
      r"\+44 20 7946 0321", "+44 20 7946 0321")
    q("report", "Which golden image is a compromised host rebuilt from?", RUNBOOK,
      r"golden image", "gi-2026.01")
    q("report", "How long are SSH logs retained according to RB-12?", RUNBOOK,
      r"Log retention for SSH logs", "400 days")
    q("report", "Who approved runbook RB-12?", RUNBOOK, r"approved 2026-01-22",
      "Hana Kowalczyk")
    q("report", "When is the next review of the SSH brute-force runbook due?", RUNBOOK,
      r"next review is due", "2026-07-22")
    q("report", "Why does a failed root login count double in RB-12?", RUNBOOK,
      r"counts double", "root logins are disabled")
    q("report", "How many distinct attacking sources in an hour trigger a P1?", RUNBOOK,
      r"P1 escalation", "500")
    q("report", "Which ticket queue does the SSH attack detector open tickets in?", RUNBOOK,
      r"queue SEC-SSH", "SEC-SSH")
    q("report", "Within how long must a host be isolated after a break-in?", RUNBOOK,
      r"Isolation after break-in", "15 minutes")


def unanswerable(no) -> None:
    no("Which IP address tried to log in as the invalid user jenkins?", r"user jenkins")
    no("From which address did the invalid user tomcat try to log in?", r"user tomcat")
    no("Which user logged in successfully with a public key?", r"Accepted publickey")
    no("When did root log in successfully over SSH on LabSZ?", r"Accepted password for root")
    no("Which IP did the sshd on LabSZ block with a firewall rule?", r"iptables", r"firewalld")
    no("What size was block blk_1234567890123456789 when it was received?",
       r"blk_1234567890123456789")
    no("Which datanode ran out of disk space in the HDFS log?", r"No space left",
       r"disk full")
    no("When did the NameNode enter safe mode?", r"safe ?mode")
    no("Which block was reported corrupt by the DataBlockScanner?", r"corrupt")
    no("Which datanode was declared dead by the NameNode?", r"dead datanode",
       r"declared dead")
    no("Which executor was lost because of an OutOfMemoryError in Spark?", r"OutOfMemory")
    no("What is the Spark application name of job 0147?", r"spark\.app\.name", r"appName")
    no("How long did stage 42 take to finish in Spark?", r"stage 42\.")
    no("Which Spark task failed with an ExecutorLostFailure?", r"ExecutorLostFailure")
    no("Which Kafka topic did the Spark job read from?", r"kafka")
    no("Which container was assigned to attempt_1445144423722_0020_m_000099_0?",
       r"attempt_1445144423722_0020_m_000099_0")
    no("How many HDFS bytes did job job_1445144423722_0020 write in total?",
       r"HDFS_BYTES_WRITTEN", r"Counters")
    no("What was the S3 output path of the Hadoop job?", r"s3a?://")
    no("Which user submitted the YARN job to queue production?", r"queue: production")
    no("Which virtual host served requests for www.example.com?", r"example\.com")
    no("What HTTP status code did Apache return for /index.php?", r"index\.php")
    no("When was Apache restarted with a graceful restart?", r"graceful")
    no("Which client was denied by mod_security?", r"mod_security")
    no("What SSL certificate error did Apache report?", r"SSL", r"certificate")
    no("When did the kernel run out of memory and start the OOM killer?", r"\boom\b",
       r"oom-killer", r"Out of memory")
    no("Which disk had I/O errors in the Linux log?", r"I/O error", r"EXT3-fs error")
    no("When was the combo host shut down for maintenance?", r"shutdown -h", r"halt")
    no("When did su open a session for root on combo?",
       r"su\(pam_unix\).*session opened for user root")
    no("What NFS server did combo mount?", r"nfs: server", r"mount\.nfs")
    no("How long did the HDFS write stall of INC-2042 last?", r"INC-2042")
    no("Who owns action item AI-5 of the postmortem?", r"AI-5")
    no("What throughput did run R5 of the capacity test reach?", r"\bR5\b")
    no("What did capacity test CT-76 measure?", r"CT-76")
    no("Which Spark version was used in capacity test CT-78?", r"CT-78.*version",
       r"version.*CT-78")
    no("How long are Apache logs retained according to the runbook?", r"Apache.*retain",
       r"retention for Apache")
    no("What is the phone number of the storage on-call for INC-2041?", r"storage on-call.*\+",
       r"\+\d+.*storage")
    no("Which datanode was decommissioned in INC-2041 besides dn-17?", r"dn-18", r"dn-16")
    no("Which golden image did the runbook use before gi-2026.01?", r"gi-2025")
    no("How many hosts run the Windows RDP service?", r"RDP", r"Remote Desktop")
    no("Wann hat sich root auf LabSZ erfolgreich per SSH angemeldet?",
       r"Accepted \w+ for root")
    no("¿Qué dirección IP causó el error de disco lleno en el nodo 7?", r"disk full",
       r"No space left")
    no("What was the nightly backup to nas-07 error?", r"nas-07", r"backup")
    no("How many calories did the user burn according to the step counter?", r"calorie")
    no("Why did the database connection pool get exhausted?", r"connection pool")
    no("Which certificate expired on the load balancer?", r"expired", r"load balancer")
    no("What was the CPU temperature when the host throttled?", r"temperature",
       r"throttl")
    no("Which DNS server timed out during the PostgreSQL failover?", r"postgresql",
       r"failover")
    no("What was the p99 latency of the checkout service?", r"checkout")
    no("Which pod was evicted by the Kubernetes scheduler?", r"kubernetes", r"evicted")
    no("How many messages were left in the RabbitMQ queue?", r"rabbitmq")
    no("Which ssh key fingerprint did root use to log in on LabSZ?", r"fingerprint",
       r"RSA SHA256")
    no("What time did the HDFS balancer start moving blocks?", r"balancer")
    no("Which Hadoop reduce task wrote the final output file part-r-00000?", r"part-r-00000")
    no("At what time was the Spark driver restarted after the crash?", r"driver restarted",
       r"crash")
    no("When did crond run the nightly backup job on combo?", r"cron")
    no("Which mail did sendmail fail to deliver on combo?", r"sendmail")
    no("Which IP address did the DHCP server lease to combo?", r"dhcp")
    no("When did ntpd lose synchronisation with its time server?", r"ntpd")
    no("Which disk did smartd report as failing?", r"smartd")
    no("Which invalid user tried to log in from 10.0.0.1?", r"10\.0\.0\.1\b")
    no("Which datanode stores replicas on /mnt/hadoop/dfs/data/current/subdir99?",
       r"subdir99\b")
    no("What is the heap size of the Spark driver JVM?", r"-Xmx", r"driver heap")
    no("Which Apache module crashed with a segmentation fault?", r"segmentation fault",
       r"Segfault")
    no("Who was on call for the SSH brute-force incident of 2026-02-11?", r"2026-02-11")
    no("Quel utilisateur a été bloqué par fail2ban sur LabSZ ?", r"fail2ban.*LabSZ",
       r"Ban \d+\.\d+")
    no("How many tasks of stage 99 ran on executor 12?", r"stage 99\.", r"executor ID 12")
