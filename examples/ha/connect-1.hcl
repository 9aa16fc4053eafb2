# connect server 1 of 3 (examples/ha/README.md): same datacenter, same etcd prefix.
datacenter = "dc1"
node_name  = "server-1"
server     = true
ports { http = 8501 }
store {
  etcd {
    endpoints = ["http://127.0.0.1:12379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"]
    prefix    = "/connect/dc1"
    kek_file  = "kek.b64"
  }
}
