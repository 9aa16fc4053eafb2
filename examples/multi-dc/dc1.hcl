# dc1: the primary datacenter. It owns the trust domain and the root, and signs the
# intermediates of secondary datacenters (HTTPS, operator:write).
datacenter = "dc1"
acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    initial_management = "@TOKEN@"
  }
}
