# dc2: a secondary datacenter. Its CA key is made here and never leaves; dc1 signs its
# intermediate. retry_join_wan and tls.defaults.ca_file may be set here instead of the
# -retry-join-wan and -primary-ca-file flags the script passes.
datacenter         = "dc2"
primary_datacenter = "dc1"
acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    initial_management = "@TOKEN@"
    replication        = "@REPLICATION@"
  }
}
