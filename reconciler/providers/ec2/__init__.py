"""Amazon EC2 (and the sandbox's moto EC2): the adapter and the ELB load balancers."""
